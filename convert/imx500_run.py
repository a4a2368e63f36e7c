"""IMX500 exports of edgecls runs: at the end of `edgecls convert --target imx500`, and of a finished run
(`edgecls export imx500 RUN_DIR`), which reads back the run's model, settings and data.

Both calibrate on the run's own decoded training images and gate on its held-out test images, decoded by the
device preprocessing (edgecls.convert.data.scan, from the decoded-image cache when it holds them), and put the
"imx500" section into the run's report.json and report.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgecls.errors import ConfigError, DataError

from .imx500 import Imx500Job, Progress, export, verdict
from .imx500 import preflight as _preflight
from .models import ModelSpec, uses_sigmoid

# The settings report.json records that make the ModelSpec (the rest stay at ModelSpec's defaults, as in convert).
_SPEC_SETTINGS = ("input_size", "dropout", "width", "depth", "separable", "alpha")


def spec_from_settings(settings: dict[str, Any], *, arch: str, num_classes: int) -> ModelSpec:
    """The ModelSpec a run's model was built with, from report.json's "settings" (as ConvertOptions.model_spec
    makes it); the weights come from model.keras, never from a download."""
    from .models import architecture

    values = {k: settings[k] for k in _SPEC_SETTINGS if settings.get(k) is not None}
    values.setdefault("input_size", architecture(arch).input_size)
    channels = 1 if settings.get("color") == "grayscale" else 3
    return ModelSpec(
        num_classes=num_classes,
        channels=channels,
        weights="none",
        edgetpu=settings.get("target") == "edgetpu",
        **values,
    )


def preflight(options: Any, observer: Any) -> None:
    """What `edgecls convert --target imx500` checks before training: the architecture's layers, Java 17 and the
    toolchain's environment (created now the first time, with progress), so no training is lost to them."""
    _preflight(options.arch, options.model_spec(3, weights="none"), observer.step)


def add_to_convert(
    result: dict[str, Any],
    model: Any,
    dataset: Any,
    options: Any,
    observer: Any,
    *,
    sigmoid: bool,
    float_probs: np.ndarray,
) -> None:
    """The end of `edgecls convert --target imx500`: export into the run being written, put the "imx500" section
    into ``result`` (the report); a failed IMX500 gate fails the run's verdict too."""
    from .data import stratified_sample

    observer.step("Raspberry Pi AI Camera (IMX500): quantising with MCT, converting with imxconv-tf")
    idx = stratified_sample(dataset.labels("train"), options.calibration_samples, options.train.seed)
    job = Imx500Job(
        arch=options.arch,
        spec=options.model_spec(len(dataset.classes), weights="none"),
        classes=tuple(dataset.classes),
        sigmoid=sigmoid,
        calibration=np.asarray(dataset.images["train"][idx]),
        test_images=np.asarray(dataset.images["test"][:]),
        test_labels=dataset.labels("test"),
        float_probs=float_probs,
        max_drop=options.max_drop,
        min_agreement=options.min_agreement,
    )
    section = export(model, job, options.out_dir, observer.step)
    result["imx500"] = section
    problem = verdict(section)
    if problem:
        result["passed"] = False
        result["gate_message"] = " ".join(filter(None, [result.get("gate_message"), f"IMX500: {problem}."]))


def export_run(
    run_dir: Path,
    *,
    data: Path | None = None,
    max_drop: float | None = None,
    min_agreement: float | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Export the finished run in ``run_dir`` for the IMX500 (RUN/imx500/, staged and swapped in) and add the
    "imx500" section to its report; returns the section. ``data``: the dataset folder, when it is no longer where the
    run was trained from. The gate's limits default to the run's own."""
    say = progress or (lambda message: None)
    run = Path(run_dir).absolute()
    report = _read_report(run)
    settings, arch, classes = report.get("settings") or {}, report["model"]["arch"], list(report["classes"])
    if report["model"].get("source_model"):
        raise ConfigError(
            f"{run} quantised a model trained elsewhere ({report['model']['source_model']}); the IMX500 "
            "export rebuilds edgecls's own architectures: train one with edgecls convert DATA"
        )
    spec = spec_from_settings(settings, arch=arch, num_classes=len(classes))
    _preflight(arch, spec, say)  # before TensorFlow and the images: the layers, Java, the toolchain
    root = _data_root(run, data)
    say(f"reading {root} (the run's split: seed {settings.get('train.seed', 0)})")
    dataset = _rescan(root, report, settings, spec)
    import keras

    from .evaluate import float_probabilities

    model = keras.models.load_model(run / "model.keras", compile=False)
    sigmoid = uses_sigmoid(arch, len(classes))
    float_probs = float_probabilities(model, dataset.images["test"], sigmoid=sigmoid)
    from .data import stratified_sample

    idx = stratified_sample(
        dataset.labels("train"), int(settings.get("calibration_samples") or 300), int(settings.get("train.seed") or 0)
    )
    job = Imx500Job(
        arch=arch,
        spec=spec,
        classes=tuple(classes),
        sigmoid=sigmoid,
        calibration=np.asarray(dataset.images["train"][idx]),
        test_images=np.asarray(dataset.images["test"][:]),
        test_labels=dataset.labels("test"),
        float_probs=float_probs,
        max_drop=report.get("max_drop", 1.0) if max_drop is None else max_drop,
        min_agreement=(report.get("min_agreement", 0.9) if min_agreement is None else min_agreement),
    )
    section = export(model, job, run, say)
    report["imx500"] = section
    _write_report(run, report)
    return section


def _read_report(run: Path) -> dict[str, Any]:
    path = run / "report.json"
    if not path.is_file() or not (run / "model.keras").is_file():
        raise ConfigError(
            f"{run} is not a finished edgecls run (it needs report.json and model.keras); give the --out "
            "folder of an edgecls convert"
        )
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        _ = report["model"]["arch"], report["classes"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{path} cannot be read as an edgecls report ({type(exc).__name__}: {exc}); convert the run again"
        ) from None
    return report


def _data_root(run: Path, data: Path | None) -> Path:
    """The dataset folder: ``data``, else where the run's manifest (in model.tflite) says it was trained from."""
    if data is not None:
        if not Path(data).is_dir():
            raise DataError(f"--data {data}: no such folder; give the dataset folder the run was trained on")
        return Path(data)
    from edgecls.model.metadata import check_model_file

    tflite = run / "model.tflite"
    manifest = (check_model_file(tflite).manifest or {}) if tflite.is_file() else {}
    root = ((manifest.get("provenance") or {}).get("dataset") or {}).get("root")
    if not root or not Path(root).is_dir():
        where = f"it was trained from {root}, which is not there now" if root else "its model.tflite does not say"
        raise DataError(
            f"{run}: the IMX500 export calibrates and checks on the run's own images, and {where}; give "
            "the dataset folder with --data"
        )
    return Path(root)


def _rescan(root: Path, report: dict[str, Any], settings: dict[str, Any], spec: ModelSpec) -> Any:
    """The run's dataset, split as it was (same seed, split, extra data), checked by its fingerprint."""
    from edgecls.model.preprocess import PreprocessConfig

    from .cache import ImageCache, default_cache_dir, default_max_bytes
    from .data import scan

    cache = None
    if settings.get("cache", True):
        cache = ImageCache(Path(settings.get("cache_dir") or default_cache_dir()), default_max_bytes())
    dataset = scan(
        root,
        input_size=(spec.input_size, spec.input_size),
        channels=spec.channels,
        seed=int(settings.get("train.seed") or 0),
        split=tuple(settings.get("split") or (0.7, 0.15, 0.15)),
        preprocess=PreprocessConfig(resize=settings.get("resize") or "squash", mean=0.0, std=1.0),
        extra=[Path(p) for p in settings.get("extra_data") or ()],
        cache=cache,
    )
    expected = report.get("dataset_fingerprint")
    if expected and dataset.fingerprint != expected:
        raise DataError(
            f"{root} is not the data the run was trained on (its files changed since); give the run's "
            "own dataset with --data, or convert again"
        )
    if list(dataset.classes) != list(report["classes"]):
        raise DataError(
            f"{root} has the classes {list(dataset.classes)}, the run {report['classes']}; give the run's "
            "own dataset with --data"
        )
    return dataset


def _write_report(run: Path, report: dict[str, Any]) -> None:
    from edgecls.fsutil import atomic_write_text

    from . import report as reporting

    reporting.write_json(run / "report.json", report)
    atomic_write_text(run / "report.md", reporting.markdown(report))
