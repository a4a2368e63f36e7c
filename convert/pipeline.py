"""`edgecls convert`: data -> train -> export (int8) -> verify against the float model -> report.

The library entry points are `convert_dataset` (train a model on a folder of images) and `convert_model` (quantise
and verify a Keras model trained elsewhere). Both write every artifact atomically into the output folder and return
the report; the parity gate's verdict is ``report["passed"]``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgecls import __version__
from edgecls.errors import ConfigError, WriteError
from edgecls.fsutil import atomic_write_bytes, atomic_write_text
from edgecls.model.labels import format_labels, read_labels_file
from edgecls.model.manifest import embed_manifest
from edgecls.model.preprocess import PreprocessConfig

from . import distributed, evaluate, gate
from . import report as reporting
from .cache import cache_summary, concat
from .data import Dataset, scan, stratified_sample
from .int8methods import DEFAULT_INT8_METHOD, INT8_METHODS, Int8Context, check_supported, int8_method
from .models import create_model, uses_sigmoid
from .options import ConvertOptions
from .staging import (
    MIN_RUN_BYTES,
    RoomWatch,
    check_room,
    claim,
    final_path,
    held_signals,
    release,
    remove_stale_stages,
    run_bytes,
    saved_bytes,
    stage_prefix,
    write_failure,
)
from .tflite_export import to_tflite
from .training import StopRequest, TrainingObserver, deterministic, make_strategy, train


class ConvertObserver(TrainingObserver, Protocol):
    """Progress events for whoever displays them (the CLI)."""

    def step(self, message: str) -> None: ...

    def decoding(self, done: int, total: int) -> None: ...


class QuietObserver:
    def step(self, message: str) -> None:
        pass

    def decoding(self, done: int, total: int) -> None:
        pass

    def stage(self, name: str, epochs: int) -> None:
        pass

    def epoch(self, stage: str, epoch: int, epochs: int, logs: dict[str, float]) -> None:
        pass


RUN_MARKERS = ("report.json", "model.tflite")
_STAGES: set[Path] = set()  # staging folders being filled now (a nested call writes into them directly)


def check_out_dir(out_dir: Path, *, overwrite: bool = False) -> None:
    """Raise ConfigError when ``out_dir`` cannot take a new run: a file, a folder of other files, or a finished run
    without ``overwrite``. Cheap: the command line asks before TensorFlow loads."""
    out = Path(out_dir).absolute()
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"--out {out} is a file; give a folder for the run")
        if any(out.iterdir()):
            if not any((out / name).exists() for name in RUN_MARKERS):
                raise ConfigError(f"--out {out} holds other files, not an edgecls run; give an empty or a new folder")
            if not overwrite:
                raise ConfigError(
                    f"--out {out} already holds a finished run; pass --overwrite to replace it (the "
                    "whole folder), or give another --out"
                )


@contextlib.contextmanager
def staged_output(out_dir: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """A fresh sibling folder to build a whole run in; on success it replaces ``out_dir`` (the old run moved aside,
    the new one renamed in, the old one removed), so ``out_dir`` holds one whole run, the old or the new, never a mix
    and never a stale file of an earlier run. On an error or an interrupt the sibling is removed and ``out_dir`` is
    untouched. A folder that already holds a finished run is replaced only with ``overwrite``; a non-empty folder
    that is not an edgecls run is never replaced."""
    out = Path(out_dir).absolute()
    if out in _STAGES:  # already inside a staged run (the demo writes its data there first)
        yield out
        return
    check_out_dir(out, overwrite=overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_stages(out)  # what runs into the same --out that were killed (SIGKILL, a power cut) left
        check_room(out.parent, MIN_RUN_BYTES, "a run")
        stage = Path(tempfile.mkdtemp(prefix=stage_prefix(out), dir=out.parent))
    except OSError as exc:
        raise WriteError(
            f"cannot make the run folder {out} ({exc.strerror or exc}); check the path and permissions"
        ) from None
    _STAGES.add(stage)
    try:
        umask = os.umask(0)
        os.umask(umask)
        stage.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the run folder gets the usual permissions
        claim(stage)  # this process's: a later run tells it from a killed run's
        yield stage
        _relocate(stage, out)
        shutil.rmtree(stage / "checkpoints", ignore_errors=True)  # the model is exported: they are of no more use
        _swap_in(stage, out)
    except BaseException as exc:  # an error, Ctrl-C, or SIGTERM (the CLI turns it into an exception)
        with held_signals():  # a second signal must not cut the clean-up short
            shutil.rmtree(stage, ignore_errors=True)
        failure = write_failure(exc, stage, out)  # a full disk, a quota, a read-only file system: one line
        if failure is not None:
            raise failure from None
        raise
    finally:
        _STAGES.discard(stage)


def _swap_in(stage: Path, out: Path) -> None:
    """Rename ``stage`` to ``out`` (the old ``out`` moved aside first, then removed), with Ctrl-C and SIGTERM held
    back until it is done, so that ``out`` is never left missing nor the old run left aside; a rename that fails
    puts the old run back."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    with held_signals():
        release(stage)
        moved = out.exists()
        if moved:
            shutil.rmtree(old, ignore_errors=True)
            os.rename(out, old)
        try:
            os.rename(stage, out)
        except OSError:
            if moved:
                os.rename(old, out)
            raise
        if moved:
            shutil.rmtree(old, ignore_errors=True)


def _relocate(stage: Path, out: Path) -> None:
    """Rewrite the staging folder's path to the final one where a run recorded it (reports, the model manifests:
    the demo's data lives inside the run)."""
    from edgecls.model.metadata import MANIFEST_NAME, check_model_file, embed_files

    old, new = str(stage), str(out)
    for name in ("report.json", "report.md"):
        path = stage / name
        if path.is_file() and old in (text := path.read_text(encoding="utf-8")):
            atomic_write_text(path, text.replace(old, new))
    for path in stage.glob("*.tflite"):
        info = check_model_file(path)
        raw = info.associated_files.get(MANIFEST_NAME, b"")
        if old.encode() in raw:
            atomic_write_bytes(
                path,
                embed_files(
                    path.read_bytes(),
                    {MANIFEST_NAME: raw.replace(json.dumps(old)[1:-1].encode(), json.dumps(new)[1:-1].encode())},
                ),
            )


def convert_dataset(
    data_dir: Path,
    options: ConvertOptions,
    observer: ConvertObserver | None = None,
    stop_request: StopRequest | None = None,
    *,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train ``options.arch`` on a folder-per-class (or pre-split) dataset, export, verify and report.
    ``stop_request`` lets the caller end training early and still get the exported, verified model (see
    edgecls.convert.training.StopRequest); the seed-cnn baseline is then skipped. The run is built beside
    ``options.out_dir`` and swapped in whole at the end (see `staged_output`; ``overwrite`` replaces a finished
    run)."""
    check_supported(int8_method(options.int8_method), options.arch)  # fail before training, not after it
    strategy = make_strategy(options.train.strategy)  # first: the multi-worker one must precede any TensorFlow op
    worker = distributed.role(strategy)
    if not worker.chief:  # it trains its shard with the others; only the chief writes --out
        obs = observer or QuietObserver()
        obs.step(f"{worker.describe()}: training with the cluster; the chief writes the run")
        with tempfile.TemporaryDirectory(prefix="edgecls-worker-") as scratch:
            _convert_dataset(Path(data_dir), replace(options, out_dir=Path(scratch)), observer, None, strategy, worker)
        return {
            "worker": {
                "task_type": worker.task_type,
                "task_index": worker.task_index,
                "num_workers": worker.num_workers,
                "out_dir": None,
            }
        }
    with staged_output(options.out_dir, overwrite=overwrite) as stage:
        return _convert_dataset(
            Path(data_dir), replace(options, out_dir=stage), observer, stop_request, strategy, worker
        )


def _convert_dataset(
    data_dir: Path,
    options: ConvertOptions,
    observer: ConvertObserver | None,
    stop_request: StopRequest | None,
    strategy: Any,
    worker: distributed.WorkerRole,
) -> dict[str, Any] | None:
    """The stages, in order: prepare the data, build the model, train, then `export_and_verify` (export with the
    chosen int8 method, verify through the runtime, gate, write the run). A worker that is not the chief stops
    after training (None)."""
    obs = observer or QuietObserver()
    started = time.perf_counter()
    if options.target == "imx500" and worker.chief:  # its layers, Java and its toolchain: before training
        from .imx500_run import preflight

        preflight(options, obs)
    dataset = prepare_data(data_dir, options, obs)
    sigmoid = uses_sigmoid(options.arch, len(dataset.classes))
    teacher, teacher_info = _teacher(options, dataset, sigmoid, obs)
    with strategy.scope():
        model = create_model(options.arch, options.model_spec(len(dataset.classes)))
    obs = RoomWatch(obs, options.out_dir, _check_room(model, options, training=True))
    t_train = time.perf_counter()
    history = train(
        model,
        dataset,
        options.train,
        sigmoid=sigmoid,
        checkpoint_dir=options.out_dir / "checkpoints",
        strategy=strategy,
        observer=obs,
        teacher=teacher,
        stop_request=stop_request,
    )
    train_s = time.perf_counter() - t_train
    if not worker.chief:
        return None
    if worker.num_workers > 1:
        model = distributed.local_copy(model, options.out_dir / "checkpoints")
    stopped = history.get("stopped_early")
    if stopped:
        best = f"the weights of epoch {stopped['best_epoch']}" if stopped["best_epoch"] else "the last weights"
        obs.step(
            f"training stopped early at {stopped['stage']} epoch {stopped['epoch']} of {stopped['epochs']}; "
            f"exporting {best} (lowest validation loss)"
        )
    wants_baseline = options.baseline and options.arch != "seed-cnn" and not stopped
    baseline = _baseline(data_dir, dataset, options, obs) if wants_baseline else None
    return export_and_verify(
        model,
        dataset,
        options,
        obs,
        sigmoid=sigmoid,
        history=history,
        baseline=baseline,
        timing={"train_s": train_s, "started": started},
        teacher=teacher_info,
    )


def _check_room(model: Any, options: ConvertOptions, *, training: bool) -> int:
    """Stop before the long stages when the disk of the run folder cannot take what the run will write (see
    staging.run_bytes), rather than with a failed write at their end. Returns what the run writes besides the
    checkpoints it keeps, with one being written: what `RoomWatch` wants free between epochs."""
    params = int(model.count_params())
    facts = {
        "edgetpu": options.target == "edgetpu",
        "baseline": training and options.baseline and options.arch != "seed-cnn",
    }
    baseline = ", and the seed-cnn baseline's 100 MiB: --no-baseline skips it" if facts["baseline"] else ""
    check_room(
        options.out_dir,
        run_bytes(params, checkpoints=2 if training else 0, **facts),
        f"this run (a model of {params:,} parameters{baseline})",
    )
    return run_bytes(params, checkpoints=0, **facts) + saved_bytes(params)


def prepare_data(data_dir: Path, options: ConvertOptions, obs: ConvertObserver) -> Dataset:
    """Stage 1: seed everything from ``options.train.seed``, then decode and split the dataset at the model's input
    size (the device's own preprocessing, see edgecls.model.preprocess)."""
    import keras

    keras.utils.set_random_seed(options.train.seed)  # weight init, dropout and shuffling follow --seed
    if options.deterministic:
        deterministic()
    size = options.size()
    preprocess = PreprocessConfig(resize=options.resize, mean=0.0, std=1.0)
    obs.step(f"reading {final_path(Path(data_dir))}")
    dataset = scan(
        data_dir,
        input_size=(size, size),
        channels=options.channels,
        seed=options.train.seed,
        split=options.split,
        preprocess=preprocess,
        progress=obs.decoding,
        extra=options.extra_data,
        cache=options.image_cache(),
        warn=lambda message: obs.step(f"warning: {message}"),
    )
    added = (
        f"; {sum(dataset.extra.values())} images from --extra-data in train {dataset.extra}" if dataset.extra else ""
    )
    obs.step(
        f"{len(dataset.classes)} classes {list(dataset.classes)}; split {dataset.split_sizes()}{added}; "
        f"{len(dataset.skipped)} files skipped; {cache_summary(dataset.cache)}"
    )
    return dataset


def _teacher(
    options: ConvertOptions, dataset: Dataset, sigmoid: bool, obs: ConvertObserver
) -> tuple[Any, dict[str, Any] | None]:
    """The --teacher to distil from, checked against this run's data and split, and its test top-1 as the student
    will see its images (for the report); (None, None) without --teacher."""
    if options.teacher is None:
        return None, None
    from . import distill

    teacher = distill.load_teacher(options.teacher, weight=options.teacher_weight)
    info = distill.check_teacher(teacher, dataset, split=options.split, sigmoid=sigmoid)
    info["test_top1"] = distill.teacher_accuracy(
        teacher, dataset.images["test"], dataset.labels("test"), sigmoid=sigmoid
    )
    obs.step(
        f"distilling from {teacher.path} (weight {teacher.weight:g}; it scores {100 * info['test_top1']:.1f}% on "
        f"the {dataset.test_source} split at this input size)"
        + ("" if info["split_checked"] else f"; note: {info['note']}")
    )
    return teacher, info


def convert_model(
    model_path: Path,
    calibration_dir: Path,
    options: ConvertOptions,
    observer: ConvertObserver | None = None,
    *,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Quantise and verify a Keras model trained elsewhere (.keras, .h5 or a SavedModel folder); the output folder
    is staged and swapped in whole as in `convert_dataset`."""
    with staged_output(options.out_dir, overwrite=overwrite) as stage:
        return _convert_model(Path(model_path), Path(calibration_dir), replace(options, out_dir=stage), observer)


def _convert_model(
    model_path: Path, calibration_dir: Path, options: ConvertOptions, observer: ConvertObserver | None
) -> dict[str, Any]:
    obs = observer or QuietObserver()
    started = time.perf_counter()
    if options.teacher is not None:
        raise ConfigError("--teacher distils while training; a model given with --calibration is only quantised")
    obs.step(f"loading {model_path}")
    model = load_external_model(model_path)
    shape = model.input_shape
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] not in (1, 3):
        raise ConfigError(f"{model_path}: input shape {shape} is not a square image input [batch, N, N, 1 or 3]")
    size, channels = int(shape[1]), int(shape[3])
    mean, std = (options.mean, options.std) if options.mean is not None else (0.0, 1.0)
    preprocess = PreprocessConfig(resize=options.resize, mean=mean, std=std)
    dataset = scan(
        calibration_dir,
        input_size=(size, size),
        channels=channels,
        seed=options.train.seed,
        split=options.split,
        preprocess=preprocess,
        progress=obs.decoding,
        cache=options.image_cache(),
        warn=lambda message: obs.step(f"warning: {message}"),
    )
    # Every calibration image is used for evaluation: the model was trained elsewhere, on other data.
    everything = [s for part in ("train", "val", "test") for s in dataset.samples[part]]
    images = concat([dataset.images[p] for p in ("train", "val", "test")])
    dataset.samples["test"], dataset.images["test"] = everything, images
    dataset.test_source = "calibration"
    outputs = int(np.prod(model.output_shape[1:]))
    classes = _external_labels(options.labels, dataset, outputs)
    dataset.classes = tuple(classes)
    sigmoid = outputs == 1
    opts = options.updated(input_size=size, color="grayscale" if channels == 1 else "rgb", arch=model.name)
    _check_room(model, opts, training=False)
    return export_and_verify(
        model,
        dataset,
        opts,
        obs,
        sigmoid=sigmoid,
        history=None,
        baseline=None,
        timing={"train_s": 0.0, "started": started},
        external=str(model_path),
    )


def load_external_model(path: Path) -> Any:
    """Load a .keras/.h5 file, or wrap a SavedModel folder's serving signature as a Keras model."""
    import keras

    if not path.exists():
        raise ConfigError(f"model not found: {path}")
    try:
        if path.is_dir():
            return _wrap_saved_model(path)
        return keras.models.load_model(path, compile=False)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot load {path} as a Keras model ({type(exc).__name__}: {str(exc)[:200]})") from None


def _wrap_saved_model(path: Path) -> Any:
    import keras
    import tensorflow as tf

    signature = tf.saved_model.load(str(path)).signatures.get("serving_default")
    if signature is None:
        raise ConfigError(f"{path} has no 'serving_default' signature; export it with model.export(path)")
    inputs = list(signature.structured_input_signature[1].values())
    if len(inputs) != 1:
        raise ConfigError(f"{path} takes {len(inputs)} inputs; expected one image input")
    shape = inputs[0].shape
    layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
    image = keras.Input(tuple(shape[1:]), name="image")
    outputs = layer(image)
    if isinstance(outputs, dict):
        if len(outputs) != 1:
            raise ConfigError(f"{path} has {len(outputs)} outputs; expected one class-score output")
        outputs = next(iter(outputs.values()))
    return keras.Model(image, outputs, name="saved_model")


def _external_labels(labels: Path | None, dataset: Dataset, outputs: int) -> list[str]:
    classes = list(dataset.classes)
    if labels is not None:
        raw = read_labels_file(labels)
        classes = list(raw.values()) if isinstance(raw, dict) else list(raw)
    expected = 2 if outputs == 1 else outputs
    if len(classes) != expected:
        raise ConfigError(
            f"the model has {expected} classes but {'--labels' if labels else 'the calibration folders'} give "
            f"{len(classes)} ({classes[:6]}...); the calibration folder names must match the model's classes"
        )
    return classes


def _baseline(data_dir: Path, dataset: Dataset, options: ConvertOptions, obs: ConvertObserver) -> dict[str, Any]:
    """Train the seed CNN on the same split: the number every report compares against."""
    obs.step("training the seed-cnn baseline")
    small = scan(
        data_dir,
        input_size=(64, 64),
        channels=options.channels,
        seed=options.train.seed,
        split=options.split,
        preprocess=PreprocessConfig(resize=options.resize, mean=0.0, std=1.0),
        extra=options.extra_data,
        cache=options.image_cache(),
    )
    k = len(small.classes)
    sigmoid = uses_sigmoid("seed-cnn", k)
    model = create_model("seed-cnn", options.updated(arch="seed-cnn", input_size=64).model_spec(k))
    config = replace(options.train, epochs=min(options.train.epochs, 15), fine_tune_epochs=0, augment=0.0)
    started = time.perf_counter()
    train(
        model,
        small,
        config,
        sigmoid=sigmoid,
        checkpoint_dir=options.out_dir / "checkpoints" / "baseline",
        strategy=make_strategy("default"),
    )
    probs = evaluate.float_probabilities(model, small.images["test"], sigmoid=sigmoid)
    return {
        "arch": "seed-cnn",
        "float_top1": evaluate.topk_accuracy(small.labels("test"), probs, 1),
        "train_s": round(time.perf_counter() - started, 1),
    }


def export(
    model: Any, dataset: Dataset, options: ConvertOptions, obs: ConvertObserver, *, sigmoid: bool
) -> tuple[bytes, Any]:
    """Stage 4: the TFLite bytes of ``model`` as ``options.quant`` asks, full int8 by the chosen `--int8-method`
    (see int8methods.INT8_METHODS), with what the method reports (None for most). The float model is unchanged."""
    ctx = _int8_context(model, dataset, options, obs, sigmoid)
    obs.step(f"exporting: {options.quant} TFLite" + (f" ({options.method})" if options.method else ""))
    if options.method is None:
        return to_tflite(model, mode=options.quant, io_type=options.io, representative=ctx.calibration), None
    return INT8_METHODS[options.method].run(ctx)


def _normalizer(dataset: Dataset) -> Any:
    """What the model expects of 0..255 pixels (identity for ours: they normalise inside the graph)."""
    cfg = dataset.preprocess
    return lambda x: (x.astype(np.float32) - float(cfg.mean or 0.0)) / float(cfg.std or 1.0)


def _int8_context(
    model: Any, dataset: Dataset, options: ConvertOptions, obs: ConvertObserver, sigmoid: bool
) -> Int8Context:
    norm = _normalizer(dataset)
    calib_idx = stratified_sample(dataset.labels("train"), options.calibration_samples, options.train.seed)
    return Int8Context(
        model=model,
        dataset=dataset,
        options=options,
        observer=obs,
        sigmoid=sigmoid,
        calibration=norm(dataset.images["train"][calib_idx]),
        normalize=norm,
    )


def write_model(path: Path, flat: bytes, manifest: dict[str, Any], classes: list[str]) -> None:
    """model.tflite with the standard TFLite metadata (for other runtimes, see .tflite_metadata), our manifest and
    the labels embedded, written atomically."""
    atomic_write_bytes(path, embed_manifest(standard_metadata(flat, manifest, classes), manifest, labels=classes))


def standard_metadata(flat: bytes, manifest: dict[str, Any], classes: list[str]) -> bytes:
    """``flat`` with the standard TFLite metadata that its manifest and classes describe."""
    from .tflite_metadata import ModelDescription, metadata_flatbuffer, with_metadata

    size, provenance = manifest["input"], manifest["provenance"]
    shown = ", ".join(classes[:8]) + (f" and {len(classes) - 8} more" if len(classes) > 8 else "")
    description = ModelDescription(
        name=f"edgecls {provenance.get('arch') or 'classifier'}",
        description=f"Classifies an image as one of {len(classes)} classes ({shown}). Made by edgecls convert.",
        version=f"edgecls {__version__}, run {provenance['run_id'][:12]}",
        width=size["width"],
        height=size["height"],
        color=size["color"],
        labels=tuple(classes),
        scores=1 if manifest["output"]["head"] == "sigmoid" else len(classes),
        mean=_floats(manifest["preprocess"].get("mean"), 0.0),
        std=_floats(manifest["preprocess"].get("std"), 1.0),
    )
    return with_metadata(flat, metadata_flatbuffer(description))


def _floats(value: Any, default: float) -> tuple[float, ...]:
    if value is None:
        return (default,)
    return tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else (float(value),)


def verify(model_path: Path, float_probs: np.ndarray, dataset: Dataset) -> dict[str, Any]:
    """Stage 5: the exported model's scores on the held-out images through the device runtime (the same
    preprocessing the device runs), compared with the float model's ``float_probs`` on the same images."""
    test_labels = np.array([s.label for s in dataset.samples["test"]])
    tflite_probs = evaluate.tflite_probabilities(model_path, [s.path for s in dataset.samples["test"]])
    return evaluate.compare(test_labels, float_probs, tflite_probs, list(dataset.classes))


def export_and_verify(
    model: Any,
    dataset: Dataset,
    options: ConvertOptions,
    obs: ConvertObserver,
    *,
    sigmoid: bool,
    history: dict[str, Any] | None,
    baseline: dict[str, Any] | None,
    timing: dict[str, float],
    external: str | None = None,
    teacher: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Stages 4 to 7 for a trained ``model``: export, verify, gate (edgecls.convert.gate), and write the run into
    ``options.out_dir`` (model.keras, model.tflite with its manifest, labels.txt, report.json/.md, plots). Returns
    the report."""
    out = options.out_dir
    out.mkdir(parents=True, exist_ok=True)
    classes = list(dataset.classes)
    float_bytes = len(to_tflite(model, mode="none"))
    _save_keras(model, out / "model.keras")
    float_probs = evaluate.float_probabilities(
        model, dataset.images["test"], sigmoid=sigmoid, normalize=_normalizer(dataset)
    )
    manifest = manifest_for(options, dataset, sigmoid, external=external)
    if teacher is not None:
        manifest["provenance"]["teacher"] = {k: teacher.get(k) for k in ("path", "arch", "weight", "split_checked")}
    flat, details, metrics, ptq = _export_and_measure(
        model, dataset, options, obs, sigmoid=sigmoid, float_probs=float_probs, manifest=manifest
    )
    model_path = out / "model.tflite"
    manifest["metrics"] = {
        "float_top1": metrics["float"]["top1"],
        f"{gate.result_key(options)}_top1": metrics["int8"]["top1"],
        "agreement": metrics["agreement"],
        "passed": not gate.gate_failures(metrics, options),
    }
    write_model(model_path, flat, manifest, classes)  # now with the metrics
    atomic_write_text(out / "labels.txt", format_labels(classes))

    result = gate.build_report(
        options,
        dataset,
        model,
        metrics,
        sizes=(model_path.stat().st_size, float_bytes),
        baseline=baseline,
        history=history,
        timing=timing,
        external=external,
    )
    _add_method_details(result, options, flat, details, ptq, metrics)
    if teacher is not None:
        result["teacher"] = teacher
    if options.target == "edgetpu":
        obs.step("Edge TPU: pre-flight, then edgetpu_compiler if installed")
        result["edgetpu"] = edgetpu_step(model_path, manifest, classes)
    if options.target == "imx500":  # RUN/imx500/ and the report's "imx500" section (edgecls.convert.imx500)
        from .imx500_run import add_to_convert

        add_to_convert(result, model, dataset, options, obs, sigmoid=sigmoid, float_probs=float_probs)
    obs.step("writing the report")
    write_report(out, result, options, dataset, history)
    return result


def _export_and_measure(
    model: Any,
    dataset: Dataset,
    options: ConvertOptions,
    obs: ConvertObserver,
    *,
    sigmoid: bool,
    float_probs: np.ndarray,
    manifest: dict[str, Any],
) -> tuple[bytes, Any, dict[str, Any], dict[str, Any] | None]:
    """Export with the chosen int8 method and verify it through the runtime, model.tflite written with the
    provisional ``manifest`` (no metrics yet); before a method that compares itself with post-training int8, that
    too. Returns the TFLite bytes, what the method reported, the metrics, and post-training int8's numbers (or
    None)."""
    model_path = options.out_dir / "model.tflite"
    classes = list(dataset.classes)
    n_test = len(dataset.samples["test"])
    method = INT8_METHODS[options.method] if options.method else None
    ptq = None
    if method is not None and method.compare_with_ptq:  # what post-training int8 gives, for the report
        flat, _ = export(model, dataset, options.updated(int8_method=DEFAULT_INT8_METHOD), obs, sigmoid=sigmoid)
        write_model(model_path, flat, manifest, classes)
        obs.step(f"verifying post-training int8 on {n_test} held-out images ({dataset.test_source} split)")
        metrics = verify(model_path, float_probs, dataset)
        ptq = {
            "int8_top1": metrics["int8"]["top1"],
            "drop_points": metrics["drop_points"],
            "agreement": metrics["agreement"],
            "int8_bytes": len(flat),
        }
    flat, details = export(model, dataset, options, obs, sigmoid=sigmoid)
    write_model(model_path, flat, manifest, classes)
    what = f"the {options.method} int8 model" if ptq else "the exported model"
    obs.step(f"verifying {what} on {n_test} held-out images ({dataset.test_source} split)")
    return flat, details, verify(model_path, float_probs, dataset), ptq


def _add_method_details(
    result: dict[str, Any],
    options: ConvertOptions,
    flat: bytes,
    details: Any,
    ptq: dict[str, Any] | None,
    metrics: dict[str, Any],
) -> None:
    """The report's record of the int8 method: the network's own bytes, QAT's history beside post-training int8's
    numbers (a failed QAT gate that post-training int8 would have passed says so), or int8-tune's record."""
    result["int8_graph_bytes"] = len(flat)  # the network alone, what float_tflite_bytes also counts
    if ptq is not None:
        result["ptq"] = ptq
        result["qat"] = {"epochs": options.qat_epochs, "history": details}
        gate.point_to_ptq(result, ptq, metrics)
    elif details is not None:
        result["int8_tuning"] = details


def write_report(
    out: Path, result: dict[str, Any], options: ConvertOptions, dataset: Dataset, history: dict[str, Any] | None
) -> None:
    """Stage 7: report.json, report.md, the confusion matrix and the training curves."""
    reporting.write_json(out / "report.json", result)
    atomic_write_text(out / "report.md", reporting.markdown(result))
    reporting.plot_confusion(
        out / "confusion_matrix.png",
        result[gate.result_key(options)]["confusion_matrix"],
        list(dataset.classes),
        f"{options.quant} model on the {dataset.test_source} split",
    )
    reporting.plot_curves(out / "training_curves.png", history or {}, f"{options.arch} training")


def edgetpu_step(model_path: Path, manifest: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    """Pre-flight ``model_path`` for the Edge TPU and compile it when ``edgetpu_compiler`` is on PATH.

    The compiled model (``model_edgetpu.tflite``, with the same manifest and labels embedded) is written atomically:
    the compiler writes into a temporary folder, and the result is renamed into place.
    """
    import subprocess
    import tempfile

    from edgecls.device import edgetpu

    check = edgetpu.preflight(model_path)
    result: dict[str, Any] = {
        "preflight": check.to_dict(),
        "compiler": None,
        "compiled_model": None,
        "command": " ".join(edgetpu.compile_command(model_path.name, ".")),
    }
    compiler = edgetpu.find_compiler()
    if compiler is None:
        result["compile_note"] = (
            "edgetpu_compiler is not installed here (it exists for x86-64 Linux only); on such a "
            f"machine run, in the output folder: {result['command']}"
        )
        return result
    with tempfile.TemporaryDirectory(dir=model_path.parent, prefix=".edgetpu.") as tmp:
        try:
            proc = subprocess.run(
                edgetpu.compile_command(model_path, tmp), capture_output=True, text=True, timeout=600, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            result["compiler"] = {"succeeded": False, "error": f"edgetpu_compiler could not run ({exc})"}
            return result
        built = edgetpu.compiled_path(model_path, tmp)
        log_file = built.with_suffix(".log")
        op_log = log_file.read_text(errors="replace") if log_file.is_file() else ""
        parsed = edgetpu.parse_compiler_log(proc.stdout + proc.stderr, op_log)
        result["compiler"] = parsed.to_dict()
        if proc.returncode == 0 and parsed.succeeded and built.is_file():
            target = edgetpu.compiled_path(model_path)
            atomic_write_bytes(target, embed_manifest(built.read_bytes(), manifest, labels=classes))
            if log_file.is_file():
                atomic_write_text(target.with_suffix(".log"), op_log)
            result["compiled_model"] = target.name
        elif not parsed.error:
            result["compiler"]["error"] = f"edgetpu_compiler exited with code {proc.returncode}"
    return result


def _save_keras(model: Any, path: Path) -> None:
    """model.keras, written beside and renamed; a write that fails (a full disk) is a WriteError."""
    tmp = path.with_name(".model.tmp.keras")
    try:
        model.save(tmp)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        reason = os.strerror(exc.errno) if exc.errno else str(exc)[:200]
        raise WriteError(f"cannot write {path} ({reason}); is the disk full?") from None


def manifest_for(options: ConvertOptions, dataset: Dataset, sigmoid: bool, external: str | None) -> dict[str, Any]:
    """The manifest embedded in model.tflite; its "metrics" are filled in once the model has been verified."""
    size = options.size()
    return {
        "preprocess": dataset.preprocess.to_dict(),
        "input": {
            "height": size,
            "width": size,
            "channels": options.channels,
            "color": options.color,
            "pixels": "raw 0..255; normalisation is inside the model" if external is None else "see preprocess",
        },
        "output": {"activation": "probabilities", "head": "sigmoid" if sigmoid else "softmax"},
        "quantization": {
            "mode": options.quant,
            "io": options.io if options.quant == "int8" else "float32",
            "calibration_samples": options.calibration_samples,
            "method": options.method,
            "bias_correction": options.corrects_biases,
            "int8_tune": options.int8_tune,
        },
        "provenance": _provenance(options, dataset, external),
        "metrics": None,
    }


def _provenance(options: ConvertOptions, dataset: Dataset, external: str | None) -> dict[str, Any]:
    import uuid

    import keras
    import tensorflow as tf

    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run_id": uuid.uuid4().hex,  # shared by model.tflite and its Edge TPU build: the pair is checked at load
        "arch": options.arch,
        "source_model": external,
        "dataset": {
            "root": str(dataset.root),
            "fingerprint": dataset.fingerprint,
            "presplit": dataset.presplit,
            "split": list(options.split),
            "split_sizes": dataset.split_sizes(),
            "seed": dataset.seed,
        },
        "versions": {
            "edgecls": __version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
    }


def write_demo_data(out_dir: Path, *, per_class: int = 300, seed: int = 0) -> Path:
    """The demo dataset for `edgecls convert --demo`, written under OUT_DIR/demo_data (kept, to try classify on)."""
    from edgecls.live.demo import write_demo_dataset

    target = out_dir / "demo_data"
    if target.exists():
        shutil.rmtree(target)
    return write_demo_dataset(target, per_class=per_class, size=64, seed=seed)


def demo_options(out_dir: Path) -> ConvertOptions:
    """Settings that train the demo in a few minutes on a laptop CPU."""
    return ConvertOptions.create(
        out_dir,
        arch="compact-cnn",
        input_size=64,
        width=24,
        depth=3,
        deterministic=True,
        epochs=30,
        batch_size=32,
        learning_rate=3e-3,
        patience=8,
        augment=0.5,
        recipe="demo",
    )
