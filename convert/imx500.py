"""The Raspberry Pi AI Camera (Sony IMX500): a trained edgecls model as the package the sensor's own chip runs.

The IMX500 toolchain (Sony's Model Compression Toolkit and imx500-converter) lives in an environment of its own
(`edgecls.convert.imx500_env`): TensorFlow 2.15 and tf.keras, which cannot load a Keras 3 model. So the export

1. refuses, before any work, a model with a layer the IMX500 does not take (`check_model`, naming the layer);
2. writes the registry architecture, its ModelSpec and the weights (layer by layer) to a job folder, with the run's
   own decoded images: calibration images from the training split, the held-out test images;
3. has `imx500_worker` rebuild the same graph in tf.keras inside that environment (each ``Rescaling`` as plain
   tensor ops, which the converter takes), check it against the Keras 3 model, quantise it for the IMX500 (MCT
   post-training quantisation) and run the quantised model on the test images;
4. runs ``imxconv-tf``, which writes packerOut.zip and the memory report;
5. gates the IMX500-quantised model against the float model as convert gates int8 (top-1 drop and agreement), and
   writes RUN/imx500/ (packerOut.zip, labels.txt, memory_report.json, dnnParams.xml, model_mct.keras, imx500.json)
   built beside and renamed into place.

On a Raspberry Pi, ``imx500-package -i packerOut.zip -o DIR`` turns the package into network.rpk.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecls.errors import ConversionError, WriteError
from edgecls.fsutil import atomic_write_text
from edgecls.model.labels import format_labels

from .imx500_env import Toolchain, check_java, ensure_env, worker_env
from .models import ARCHITECTURES, ModelSpec, create_model

FOLDER = "imx500"
WORKER = Path(__file__).with_name("imx500_worker.py")
# The Keras layers the rebuild and the IMX500 converter take (those of every registry architecture; Rescaling is
# rewritten as tensor ops). Anything else is refused up front, by name.
LAYERS = frozenset(
    {
        "InputLayer",
        "Rescaling",
        "Conv2D",
        "DepthwiseConv2D",
        "BatchNormalization",
        "ReLU",
        "Activation",
        "Dense",
        "Dropout",
        "GlobalAveragePooling2D",
        "MaxPooling2D",
        "Flatten",
        "Add",
        "Multiply",
        "ZeroPadding2D",
    }
)
ACTIVATIONS = frozenset({"relu", "relu6", "softmax", "sigmoid", "hard_sigmoid", "hard_swish", "hard_silu", "linear"})
REBUILD_TOLERANCE = 1e-4  # largest difference of the tf.keras rebuild's probabilities from the Keras 3 model's

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Imx500Job:
    """What an export needs besides the model: the registry architecture and spec it was built from, its classes,
    uint8 images at the input size (``calibration`` from the training split, ``test_images`` held out, with their
    labels and the float model's probabilities on them) and the parity gate's limits."""

    arch: str
    spec: ModelSpec
    classes: tuple[str, ...]
    sigmoid: bool
    calibration: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    float_probs: np.ndarray
    max_drop: float = 1.0
    min_agreement: float = 0.9


def check_model(model: Any, *, arch: str) -> None:
    """ConversionError, naming the layer, when ``model`` has a layer the IMX500 export does not take: one outside
    `LAYERS`, an activation outside `ACTIVATIONS`, a grayscale input (the sensor gives the network RGB), or an
    architecture that is not edgecls's own (the export rebuilds it from the registry)."""
    channels = model.input_shape[-1]
    if channels != 3:
        raise ConversionError(
            f"the IMX500 feeds the network the sensor's RGB image, and this {arch} takes {channels} "
            "channel(s); convert with --color rgb for the AI Camera"
        )
    for layer in _layers(model):
        kind = type(layer).__name__
        activation = getattr(layer, "activation", None)
        name = getattr(activation, "__name__", None) if kind == "Activation" else None
        if kind not in LAYERS or (name is not None and name not in ACTIVATIONS):
            what = f"{kind}({name})" if name else kind
            raise ConversionError(
                f"the IMX500 export does not take layer {layer.name!r} ({what}) of {arch}; it takes "
                f"{', '.join(sorted(LAYERS))} and the activations {', '.join(sorted(ACTIVATIONS))}"
            )
    if arch not in ARCHITECTURES:
        raise ConversionError(
            f"the IMX500 export rebuilds edgecls's own architectures ({', '.join(ARCHITECTURES)}); "
            f"{arch!r} is not one of them: train it with edgecls convert --arch ..."
        )


def check_architecture(arch: str, spec: ModelSpec) -> None:
    """`check_model` on an untrained ``arch`` built from ``spec``: what convert asks before training."""
    import dataclasses

    check_model(create_model(arch, dataclasses.replace(spec, weights="none")), arch=arch)


def preflight(arch: str, spec: ModelSpec, progress: Progress | None = None) -> Toolchain:
    """Everything an IMX500 export needs that can be checked before the long work: the architecture's layers, Java
    17, the toolchain's environment (created here the first time)."""
    check_architecture(arch, spec)
    check_java()
    return ensure_env(progress)


def _layers(model: Any) -> list[Any]:
    found = []
    for layer in model.layers:
        found += _layers(layer) if hasattr(layer, "layers") else [layer]
    return found


def export(model: Any, job: Imx500Job, run_dir: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Export ``model`` (Keras 3, trained) for the IMX500 into ``run_dir``/imx500, replacing what was there only once
    the whole new folder is written; returns the report's "imx500" section (see `parity`, `memory_use`)."""
    say = progress or (lambda message: None)
    check_model(model, arch=job.arch)
    check_java()
    toolchain = ensure_env(say)
    started = time.perf_counter()
    run_dir = Path(run_dir)
    stage = new_stage(run_dir)
    try:
        with tempfile.TemporaryDirectory(prefix="edgecls-imx500-") as scratch:
            work = Path(scratch)
            _write_job(model, job, work, steps=("float", "quantize"))
            result = _run_worker(toolchain, work, say)
            difference = _rebuild_difference(work, job)
            quantized = _probabilities(np.load(work / "quantized.npy"), job.sigmoid)
            converted = _run_converter(toolchain, work / "model_mct.keras", work / "out", say)
            section = _section(job, quantized, difference, result, converted, work / "out" / "packerOut.zip")
            _stage_files(work, converted["report_name"], stage)
        section["seconds"]["total"] = round(time.perf_counter() - started, 1)
        atomic_write_text(stage / "labels.txt", format_labels(job.classes))
        atomic_write_text(stage / "imx500.json", json.dumps(section, indent=2) + "\n")
        _swap_in(stage, run_dir / FOLDER)
    except OSError as exc:
        raise WriteError(f"cannot write {run_dir / FOLDER} ({exc.strerror or exc}); is the disk full?") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return section


def _rebuild_difference(work: Path, job: Imx500Job) -> float:
    """How far the tf.keras rebuild's probabilities are from the Keras 3 model's; a ConversionError past
    REBUILD_TOLERANCE, where the export would not be this model."""
    rebuilt = _probabilities(np.load(work / "float.npy"), job.sigmoid)
    difference = float(np.max(np.abs(rebuilt - job.float_probs))) if len(rebuilt) else 0.0
    if difference > REBUILD_TOLERANCE:
        raise ConversionError(
            f"the tf.keras rebuild of {job.arch} gives probabilities up to {difference:.2g} "
            f"from the Keras 3 model's (at most {REBUILD_TOLERANCE:g}): the export would not "
            "be this model; please report it"
        )
    return difference


def _section(
    job: Imx500Job,
    quantized: np.ndarray,
    difference: float,
    result: dict[str, Any],
    converted: dict[str, Any],
    package: Path,
) -> dict[str, Any]:
    """The report's "imx500" section but the total time: the parity gate, the memory use, the input and output
    the camera sees, the files, the versions and the time of each step."""
    return {
        **parity(
            job.test_labels,
            job.float_probs,
            quantized,
            job.classes,
            max_drop=job.max_drop,
            min_agreement=job.min_agreement,
        ),
        "memory": memory_use(converted["memory_report"]),
        "rebuild_max_difference": difference,
        "calibration_images": len(job.calibration),
        "input": {
            "width": job.spec.input_size,
            "height": job.spec.input_size,
            "color": "rgb",
            "pixels": "uint8 0..255; the scaling is inside the network",
        },
        "output": {"head": "sigmoid" if job.sigmoid else "softmax", "scale": converted["output_scale"]},
        "package_bytes": package.stat().st_size,
        "versions": result.get("versions", {}),
        "files": {
            "package": f"{FOLDER}/packerOut.zip",
            "labels": f"{FOLDER}/labels.txt",
            "memory_report": f"{FOLDER}/memory_report.json",
        },
        "seconds": {**result.get("seconds", {}), "convert": converted["seconds"]},
    }


def _stage_files(work: Path, report_name: str, stage: Path) -> None:
    """The converter's package, memory report and parameters (those it wrote) and the MCT model, copied into the
    stage folder."""
    for name, target in (
        ("packerOut.zip", "packerOut.zip"),
        (report_name, "memory_report.json"),
        ("dnnParams.xml", "dnnParams.xml"),
    ):
        if (work / "out" / name).is_file():
            shutil.copyfile(work / "out" / name, stage / target)
    shutil.copyfile(work / "model_mct.keras", stage / "model_mct.keras")


def _probabilities(out: np.ndarray, sigmoid: bool) -> np.ndarray:
    if sigmoid:
        p = out.reshape(-1)
        return np.stack([1.0 - p, p], axis=1)
    return out


def rebuild_outputs(
    model: Any, *, arch: str, spec: ModelSpec, images: np.ndarray, progress: Progress | None = None
) -> np.ndarray:
    """The raw outputs of ``model``'s tf.keras rebuild (the IMX500 form: Rescaling as tensor ops) on uint8
    ``images``, computed in the toolchain's environment: what the export checks against the Keras 3 model."""
    say = progress or (lambda message: None)
    check_model(model, arch=arch)
    toolchain = ensure_env(say)
    empty = np.zeros((0, *images.shape[1:]), np.uint8)
    job = Imx500Job(
        arch=arch,
        spec=spec,
        classes=(),
        sigmoid=False,
        calibration=empty,
        test_images=images,
        test_labels=np.zeros(len(images), np.int64),
        float_probs=empty,
    )
    with tempfile.TemporaryDirectory(prefix="edgecls-imx500-") as scratch:
        work = Path(scratch)
        _write_job(model, job, work, steps=("float",))
        _run_worker(toolchain, work, say)
        return np.load(work / "float.npy")


def _write_job(model: Any, job: Imx500Job, work: Path, *, steps: Sequence[str]) -> None:
    from edgecls import errors

    from . import models

    arrays: dict[str, np.ndarray] = {}
    layers = []
    for index, layer in enumerate(layer for layer in _layers(model) if layer.weights):
        keys = [f"{index}/{i}" for i in range(len(layer.weights))]
        arrays.update(zip(keys, layer.get_weights()))
        layers.append({"name": layer.name, "class": type(layer).__name__, "keys": keys})
    np.savez(work / "weights.npz", **arrays)
    np.save(work / "calibration.npy", np.asarray(job.calibration, dtype=np.uint8))
    np.save(work / "test.npy", np.asarray(job.test_images, dtype=np.uint8))
    spec = {**asdict(job.spec), "weights": "none"}  # the weights come from weights.npz, never from a download
    description = {
        "arch": job.arch,
        "spec": spec,
        "layers": layers,
        "steps": list(steps),
        "models_py": models.__file__,
        "errors_py": errors.__file__,
    }
    (work / "job.json").write_text(json.dumps(description), encoding="utf-8")


def _run_worker(toolchain: Toolchain, work: Path, say: Progress) -> dict[str, Any]:
    """Run imx500_worker.py in the toolchain's environment; its progress lines go to ``say``."""
    from .imx500_worker import PROGRESS

    log = _run([str(toolchain.python), str(WORKER), str(work)], work / "worker.log", say, PROGRESS)
    try:
        result = json.loads((work / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ConversionError(
            f"the IMX500 quantisation step ended without a result (killed? out of memory?): {_last_lines(log)}"
        ) from None
    if "error" in result:
        raise ConversionError(
            f"the IMX500 quantisation step failed: {result['error']}"
            + (f"; the log is in {_keep_log(log)}" if result.get("traceback") else "")
        )
    return result


def _run_converter(toolchain: Toolchain, keras_file: Path, out: Path, say: Progress) -> dict[str, Any]:
    """imxconv-tf on the quantised model: packerOut.zip, the memory report and dnnParams.xml in ``out``."""
    say("converting with imxconv-tf (Java; a minute or more)")
    started = time.perf_counter()
    command = toolchain.converter_command("-i", str(keras_file), "-o", str(out), "--report-size-unit", "B")
    log = _run(command, out.parent / "imxconv.log", say, None)
    text = log.read_text(encoding="utf-8", errors="replace")
    report = out / f"{keras_file.stem}_MemoryReport.json"
    if not (out / "packerOut.zip").is_file() or not report.is_file():
        errors = [line.split("ERROR", 1)[1].strip(" :") for line in text.splitlines() if " ERROR " in line]
        reason = "; ".join(errors[-3:]) or _last_lines(log)
        raise ConversionError(f"imxconv-tf did not convert the network: {reason}; the log is in {_keep_log(log)}")
    return {
        "memory_report": json.loads(report.read_text(encoding="utf-8")),
        "report_name": report.name,
        "output_scale": _output_scale(out / "dnnParams.xml"),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _run(command: list[str], log_path: Path, say: Progress, prefix: str | None) -> Path:
    """Run ``command`` with its output in ``log_path``; lines starting with ``prefix`` go to ``say`` as well. A
    non-zero exit is left to the caller, which knows what the output means."""
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=worker_env(), cwd=log_path.parent
        )
        try:
            for line in proc.stdout or ():
                log.write(line)
                if prefix and line.startswith(prefix):
                    say(line[len(prefix) :].strip())
            proc.wait()
        except BaseException:  # Ctrl-C, SIGTERM: the child goes with the export
            proc.kill()
            proc.wait()
            raise
    return log_path


def _last_lines(log: Path, count: int = 3) -> str:
    lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return " | ".join(lines[-count:])[-600:] or "no output"


def _keep_log(log: Path) -> Path:
    """A copy of ``log`` that outlives the job folder, for the message of a failure."""
    kept = Path(tempfile.gettempdir()) / f"edgecls-imx500-{os.getpid()}-{log.name}"
    shutil.copyfile(log, kept)
    return kept


def _output_scale(dnn_params: Path) -> float | None:
    """The output tensor's quantisation scale from dnnParams.xml (1/256 for a softmax)."""
    from xml.etree import ElementTree

    try:
        tensor = ElementTree.parse(dnn_params).find(".//outputTensor")
        return float(tensor.get("scale")) if tensor is not None and tensor.get("scale") else None
    except (OSError, ElementTree.ParseError, ValueError):
        return None


_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}


def parse_size(text: str) -> int:
    """Bytes from the memory report's sizes: "934464B", "113.00KB", "8.00MB"."""
    found = re.fullmatch(r"\s*([\d.]+)\s*([KMG]?B)\s*", str(text))
    if not found:
        raise ConversionError(f"the IMX500 memory report has a size {text!r} that edgecls cannot read")
    return round(float(found.group(1)) * _UNITS[found.group(2)])


def memory_use(report: dict[str, Any]) -> dict[str, Any]:
    """The figures of imxconv-tf's memory report: bytes used of the on-chip memory that weights, activations and the
    input buffer share (8 MB), the share, whether it fits."""
    memory = report.get("Memory Report", report)
    used, total = parse_size(memory["Memory Usage"]), parse_size(memory["Total Memory Available On Chip"])
    network = (memory.get("Networks") or [{}])[0]
    return {
        "used_bytes": used,
        "available_bytes": total,
        "share": round(used / total, 4) if total else None,
        "fits": bool(memory.get("Fit In Chip", used <= total)),
        "model_bytes": parse_size(memory["Model Memory Physical Size"]),
        "runtime_bytes": parse_size(memory["Runtime Memory Physical Size"]),
        "input_persistent": bool(memory.get("Input Persistent", False)),
        "input_persistence_bytes": (
            parse_size(network["Input Persistence Cost"]) if network.get("Input Persistence Cost") else None
        ),
    }


def parity(
    labels: np.ndarray,
    float_probs: np.ndarray,
    quantized_probs: np.ndarray,
    classes: Sequence[str],
    *,
    max_drop: float,
    min_agreement: float,
) -> dict[str, Any]:
    """The IMX500 parity gate: the quantised model's top-1 against the float model's on the same held-out images, as
    convert gates int8 (a drop of at most ``max_drop`` points, top-1 agreement of at least ``min_agreement``)."""
    from .evaluate import compare

    metrics = compare(labels, float_probs, quantized_probs, list(classes))
    failures = []
    if metrics["drop_points"] > max_drop:
        failures.append(
            f"IMX500 top-1 is {metrics['drop_points']:.2f} points below float, more than --max-drop {max_drop:.2f}"
        )
    if metrics["agreement"] < min_agreement:
        failures.append(
            f"the IMX500 model and the float model agree on the top-1 class of "
            f"{100 * metrics['agreement']:.1f}% of the test images, under --min-agreement "
            f"{100 * min_agreement:.0f}%"
        )
    return {
        "float_top1": metrics["float"]["top1"],
        "imx500_top1": metrics["int8"]["top1"],
        "agreement": metrics["agreement"],
        "drop_points": metrics["drop_points"],
        "test_images": len(labels),
        "max_drop": max_drop,
        "min_agreement": min_agreement,
        "passed": not failures,
        "gate_message": "; ".join(failures) or None,
    }


def verdict(section: dict[str, Any]) -> str | None:
    """Why the export is not good enough (the parity gate, or a network that does not fit on the chip); None when
    it is."""
    problems = [section["gate_message"]] if section.get("gate_message") else []
    if not section["memory"]["fits"]:
        problems.append(
            f"the network needs {section['memory']['used_bytes'] / 1024**2:.2f} MiB of the IMX500's "
            f"{section['memory']['available_bytes'] / 1024**2:.2f} MiB: a smaller --input-size or --alpha"
        )
    return "; ".join(problems) or None


def summary_line(section: dict[str, Any]) -> str:
    """One line for the command line: the IMX500 model's top-1, drop, agreement, memory."""
    memory = section["memory"]
    return (
        f"IMX500: top-1 {100 * section['imx500_top1']:.1f}% (drop {section['drop_points']:.2f} pt, agreement "
        f"{100 * section['agreement']:.1f}%), {memory['used_bytes'] / 1024:.0f} KiB = {100 * memory['share']:.0f}% "
        f"of the {memory['available_bytes'] / 1024**2:.0f} MB on-chip memory - "
        + ("passed" if verdict(section) is None else "FAILED")
        + f"; package {section['files']['package']}"
    )


def markdown_lines(section: dict[str, Any] | None) -> list[str]:
    """report.md's section for the IMX500 export (nothing without one)."""
    if not section:
        return []
    memory = section["memory"]
    problem = verdict(section)
    gate = (
        f"**IMX500 parity gate {'PASSED' if problem is None else 'FAILED'}**: the IMX500-quantised model (MCT "
        f"post-training quantisation, its fake-quant Keras model) top-1 {100 * section['imx500_top1']:.1f}% vs "
        f"float {100 * section['float_top1']:.1f}% on the same {section['test_images']} held-out images (drop "
        f"{section['drop_points']:.2f} points, allowed {section['max_drop']:.2f}); top-1 agreement "
        f"{100 * section['agreement']:.1f}% (at least {100 * section['min_agreement']:.0f}%)."
    )
    lines = ["", "## Raspberry Pi AI Camera (IMX500)", "", gate, ""]
    if problem:
        lines += [f"> {problem}", ""]
    persistence = (
        f", of which {memory['input_persistence_bytes'] / 1024:.0f} KiB keeps the input image "
        "(imxconv-tf --no-input-persistency frees it)"
        if memory.get("input_persistence_bytes")
        else ""
    )
    fits = "" if memory["fits"] else " - DOES NOT FIT"
    lines += [
        (
            f"- on-chip memory: {memory['used_bytes'] / 1024:.0f} KiB of {memory['available_bytes'] / 1024**2:.2f} MiB "
            f"({100 * memory['share']:.1f}%; weights {memory['model_bytes'] / 1024:.0f} KiB, activations "
            f"{memory['runtime_bytes'] / 1024:.0f} KiB{persistence}){fits}"
        ),
        (
            f"- package: `{section['files']['package']}` ({section['package_bytes'] / 1024:.0f} KiB); on the Pi: "
            "`imx500-package -i packerOut.zip -o DIR` writes network.rpk"
        ),
        (
            f"- calibration: {section['calibration_images']} training images; the tf.keras rebuild is within "
            f"{section['rebuild_max_difference']:.1g} of the Keras 3 model"
        ),
        (
            "- measured with the device preprocessing (edgecls.model.preprocess); on the camera the sensor's ISP crops and "
            "resizes the frame to the input instead"
        ),
    ]
    return lines


def new_stage(run_dir: Path) -> Path:
    """A hidden folder in ``run_dir`` to build RUN/imx500 in (what killed exports left is removed first); a
    WriteError naming the folder when it cannot be made."""
    _remove_stale_stages(run_dir)
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{FOLDER}.new-{os.getpid()}-", dir=run_dir))
        mask = os.umask(0)
        os.umask(mask)
        stage.chmod(0o777 & ~mask)  # mkdtemp makes it 0700; the folder gets the run's usual permissions
    except OSError as exc:
        raise WriteError(
            f"cannot write {run_dir / FOLDER} ({exc.strerror or exc}); check the run folder and its permissions"
        ) from None
    return stage


def _remove(path: Path) -> None:
    """Remove a folder, or a link (never what it points to)."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _swap_in(stage: Path, target: Path) -> None:
    """Rename the finished ``stage`` to ``target``, the old ``target`` moved aside first and removed after, so that
    ``target`` is always a whole export, the old or the new; a rename that fails puts the old one back."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    moved = target.exists() or target.is_symlink()
    if moved:
        _remove(old)
        os.rename(target, old)
    try:
        os.rename(stage, target)
    except OSError:
        if moved:
            os.rename(old, target)
        raise
    if moved:
        _remove(old)


def _remove_stale_stages(run_dir: Path) -> None:
    """What exports into ``run_dir`` that were killed left (their process is gone); a live one's is kept."""
    for path in [*run_dir.glob(f".{FOLDER}.new-*"), *run_dir.glob(f".{FOLDER}.old-*")]:
        found = re.match(rf"\.{FOLDER}\.(?:new|old)-(\d+)", path.name)
        if found and not _alive(int(found.group(1))):
            _remove(path)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process starts no second export into one run at once
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
