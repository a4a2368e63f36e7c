"""The Python API of the converter: `train` a model on a folder of images, `quantize` a Keras model trained
elsewhere, or run the `demo`; each exports a verified int8 TFLite model and returns a frozen `ConvertResult`.

    from edgecls.convert import train

    result = train("photos/", "run", arch="mobilenet_v2", epochs=20)
    print(result)               # one line: the verdict, float and int8 top-1, agreement
    result.model_path           # run/model.tflite, ready for edgecls.Classifier or `edgecls deploy`

Options are the `edgecls convert` flags as keyword arguments (``input_size=96``, ``learning_rate=3e-3``,
``int8_method="int8-tune"``, ``max_drop=2``); `OPTION_NAMES` lists them. Paths may be str or Path.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from edgecls.errors import ConfigError

from .report import REPORT_SCHEMA_VERSION


@dataclass(frozen=True)
class ConvertResult:
    """What a conversion gave: the verdict, the numbers, and where the artifacts are. ``report`` is report.json,
    read-only; ``schema_version`` is its version (it changes only when a key changes meaning or goes away)."""

    schema_version: int
    passed: bool  # the parity gate: int8 within --max-drop of float and agreeing on >= --min-agreement of images
    learned_nothing: bool  # the float model is no better than always answering the most frequent class
    arch: str
    classes: tuple[str, ...]
    float_top1: float
    int8_top1: float  # the exported model's top-1 (int8, or float16/dynamic/float with quant=...)
    agreement: float
    drop_points: float
    gate_message: str | None
    warnings: tuple[str, ...]
    out_dir: Path
    model_path: Path
    keras_path: Path
    labels_path: Path
    report_path: Path  # report.json
    report_md_path: Path
    confusion_matrix_path: Path
    training_curves_path: Path
    edgetpu_model_path: Path | None
    report: Mapping[str, Any] = dataclasses.field(repr=False, compare=False)

    @classmethod
    def from_report(cls, report: dict[str, Any], out_dir: Path) -> ConvertResult:
        key = "int8" if report["quantization"]["mode"] == "int8" else "tflite"
        compiled = (report.get("edgetpu") or {}).get("compiled_model")
        return cls(
            schema_version=int(report.get("schema_version", REPORT_SCHEMA_VERSION)),
            passed=bool(report["passed"]),
            learned_nothing=bool(report.get("learned_nothing")),
            arch=report["model"]["arch"],
            classes=tuple(report["classes"]),
            float_top1=float(report["float"]["top1"]),
            int8_top1=float(report[key]["top1"]),
            agreement=float(report["agreement"]),
            drop_points=float(report["drop_points"]),
            gate_message=report.get("gate_message"),
            warnings=tuple(report.get("warnings") or ()),
            out_dir=out_dir,
            model_path=out_dir / "model.tflite",
            keras_path=out_dir / "model.keras",
            labels_path=out_dir / "labels.txt",
            report_path=out_dir / "report.json",
            report_md_path=out_dir / "report.md",
            confusion_matrix_path=out_dir / "confusion_matrix.png",
            training_curves_path=out_dir / "training_curves.png",
            edgetpu_model_path=out_dir / compiled if compiled else None,
            report=MappingProxyType(report),
        )

    @property
    def verdict(self) -> str:
        if not self.passed:
            return "FAILED"
        return "passed, but the model learned nothing" if self.learned_nothing else "passed"

    def __str__(self) -> str:
        return (
            f"{self.arch}: float top-1 {100 * self.float_top1:.1f}%, int8 top-1 {100 * self.int8_top1:.1f}% "
            f"(drop {self.drop_points:.2f} pt, agreement {100 * self.agreement:.1f}%); parity gate "
            f"{self.verdict}; model {self.model_path}"
        )

    def _repr_markdown_(self) -> str:  # how a notebook shows a result left at the end of a cell
        return self.report_md_path.read_text(encoding="utf-8") if self.report_md_path.is_file() else str(self)


@dataclass(frozen=True)
class WorkerResult:
    """What `train` returns on a multi-worker cluster's worker that is not the chief: it trained its shard with the
    others; the chief exported, verified and wrote the run (`--strategy multi-worker`, docs/convert.md)."""

    task_type: str
    task_index: int
    num_workers: int
    passed: bool = True  # nothing of its own to fail: the chief's result has the verdict

    def __str__(self) -> str:
        return (
            f"{self.task_type} {self.task_index} of {self.num_workers} workers: trained its shard; the chief "
            "wrote the run"
        )


def _result(report: dict[str, Any], out: str | os.PathLike[str]) -> ConvertResult | WorkerResult:
    worker = report.get("worker")
    if worker is not None:
        return WorkerResult(worker["task_type"], worker["task_index"], worker["num_workers"])
    return ConvertResult.from_report(report, Path(out).absolute())


def options_from(out: str | os.PathLike[str], options: dict[str, Any], *, base: Any = None) -> Any:
    """A ConvertOptions for ``out`` from flat keyword options, over ``base`` (default: the defaults). An unknown
    name is a ConfigError that names the closest one."""
    from .options import ConvertOptions

    if "split" in options:
        options = {**options, "split": _split(options["split"])}
    return (base or ConvertOptions(out_dir=Path(out))).updated(out_dir=Path(out), **options)


def _split(value: Any) -> tuple[float, float, float]:
    if isinstance(value, str):
        value = value.split(",")
    try:
        parts = [float(p) for p in value]
    except (TypeError, ValueError):
        raise ConfigError(f"split expects three numbers like (70, 15, 15) (received {value!r})") from None
    if len(parts) != 3 or min(parts) < 0 or sum(parts) <= 0:
        raise ConfigError(f"split expects three non-negative numbers like (70, 15, 15) (received {value!r})")
    total = sum(parts)
    return (parts[0] / total, parts[1] / total, parts[2] / total)


def _observer(progress: Any) -> Any:
    if progress is True:
        from .progress import RichObserver

        return RichObserver()
    if progress in (False, None):
        from .pipeline import QuietObserver

        return QuietObserver()
    return progress  # an observer of the caller's (see pipeline.ConvertObserver)


def import_tensorflow(command: str = "convert", *, verbose: bool = False) -> Any:
    """TensorFlow, with its own chatter held back unless ``verbose``: the C++ log below ERROR and the ERROR lines
    it prints for things that are not errors here (cuInit without a GPU), the retracing notes of tf.function, and
    Keras' Python warnings. Real failures still arrive as exceptions. Without TensorFlow, a ConfigError that says
    what to install."""
    from edgecls.nativelog import quiet_native_stderr

    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        if verbose:
            import tensorflow
        else:
            with quiet_native_stderr(replay=False) as said:  # what TensorFlow prints while it loads
                import tensorflow
            from .tflog import is_native_log_line

            for line in said:  # its absl/C++ log lines (no CUDA here, ...) are held back; anything else is shown
                if not is_native_log_line(line):
                    print(line, file=sys.stderr)
    except ImportError:
        raise ConfigError(
            f"edgecls {command} runs on the workstation and needs TensorFlow: pip install 'edgecls[convert]'"
        ) from None
    if not verbose:
        tensorflow.get_logger().setLevel("ERROR")
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
        for module in ("keras", "tensorflow", "tf_keras", "tensorflow_model_optimization"):
            warnings.filterwarnings("ignore", module=module)
    return tensorflow


def preflight(
    out: str | os.PathLike[str],
    *,
    overwrite: bool,
    options: Mapping[str, Any],
    data: str | os.PathLike[str] | None = None,
    model: str | os.PathLike[str] | None = None,
) -> None:
    """What can be checked before TensorFlow loads (seconds), so that a typo is one error at once: the data folder,
    the model file, and whether ``out`` can take the run."""
    from edgecls.errors import DataError

    from .pipeline import check_out_dir

    if model is not None and not Path(model).exists():
        raise ConfigError(f"model not found: {model}; give a .keras/.h5 file or a SavedModel folder")
    if data is not None:
        where = Path(data)
        if not where.is_dir():
            what = "calibration folder" if model is not None else "dataset folder"
            raise DataError(f"{what} not found: {where}; expected DATA_DIR/<class>/*.jpg or train/ val/ [test/]")
    check_out_dir(Path(out), overwrite=overwrite)


def check_paths(opts: Any) -> None:
    """The files and folders the options name: the weights file, --extra-data folders, the teacher."""
    from edgecls.errors import DataError

    weights = str(opts.weights)
    if weights not in ("imagenet", "none") and not Path(weights).is_file():
        raise ConfigError(f"--weights {weights!r}: expected 'imagenet', 'none' or a local .h5/.keras file that exists")
    for folder in opts.extra_data:
        if not Path(folder).is_dir():
            raise DataError(f"--extra-data {folder}: not a folder; expected EXTRA_DIR/<class>/*.jpg")
    if opts.teacher is not None and not Path(opts.teacher).exists():
        raise ConfigError(
            f"--teacher {opts.teacher}: not found; give an earlier convert output folder or a .keras file"
        )


def training_device() -> str:
    """Which device TensorFlow trains on, in a line for the log."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = []
        for gpu in gpus:
            try:
                names.append(tf.config.experimental.get_device_details(gpu).get("device_name") or gpu.name)
            except (RuntimeError, ValueError):
                names.append(gpu.name)
        return f"training on the GPU: {', '.join(names)} (TensorFlow {tf.__version__})"
    return f"training on the CPU, {os.cpu_count()} cores; no GPU found (TensorFlow {tf.__version__})"


def train(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    arch: str = "compact-cnn",
    overwrite: bool = False,
    progress: Any = True,
    stop_request: Any = None,
    verbose: bool = False,
    **options: Any,
) -> ConvertResult | WorkerResult:
    """Train ``arch`` on ``data`` (a folder of class folders, or train/ val/ [test/]), export it to int8 TFLite,
    verify it against the float model on the held-out images and write the run to ``out`` (built beside it and
    swapped in whole; ``overwrite`` replaces an earlier run there).

    ``options``: any `edgecls convert` option by its Python name (`OPTION_NAMES`), e.g. ``epochs=20``,
    ``input_size=96``, ``int8_method="int8-tune"``. ``progress``: True draws progress (terminal or notebook),
    False is silent, or pass an observer. ``stop_request`` (training.StopRequest) ends training early from another
    thread or a signal handler, and the best weights so far are still exported and verified.

    A model that fails the parity gate is still written; ``result.passed`` says so. With ``strategy="multi-worker"``
    a worker that is not the chief returns a `WorkerResult` (the chief writes the run). Errors (no images, a bad
    option) are EdgeclsError subclasses with a message that says what to do."""
    from .pipeline import convert_dataset
    from .recipes import recipe

    preflight(out, overwrite=overwrite, data=data, options=options)  # a typo costs no TensorFlow start-up
    name, filled = recipe(arch, options, data)
    opts = options_from(out, {**filled, "arch": arch, **options, **({"recipe": name} if name else {})})
    check_paths(opts)
    import_tensorflow("convert", verbose=verbose)  # its log level is read when it loads
    obs = _observer(progress)
    obs.step(training_device())
    if filled:
        obs.step(
            f"the {name} recipe (docs/convert.md) sets "
            + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in filled.items())
            + "; a flag you give wins"
        )
    report = convert_dataset(Path(data), opts, obs, stop_request, overwrite=overwrite)
    return _result(report, out)


def quantize(
    model: str | os.PathLike[str],
    calibration: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: Any = True,
    verbose: bool = False,
    **options: Any,
) -> ConvertResult:
    """Quantise a Keras model trained elsewhere (.keras, .h5 or a SavedModel folder) to int8 with ``calibration``
    (class folders whose names are the model's classes, or pass ``labels=``), verify it on every calibration image
    and write the run to ``out``. ``mean``/``std``: the normalisation the model expects of 0..255 pixels, when it
    does not normalise inside. Same options and result as `train`."""
    from .pipeline import convert_model

    preflight(out, overwrite=overwrite, data=calibration, options=options, model=model)
    opts = options_from(out, options)
    check_paths(opts)
    import_tensorflow("convert", verbose=verbose)
    report = convert_model(Path(model), Path(calibration), opts, _observer(progress), overwrite=overwrite)
    return ConvertResult.from_report(report, Path(out).absolute())


def demo(
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: Any = True,
    stop_request: Any = None,
    verbose: bool = False,
    seed: int = 0,
    **options: Any,
) -> ConvertResult:
    """`edgecls convert --demo`: write a generated dataset of shapes into ``out``/demo_data, then `train` on it
    with settings that finish in about 2 minutes on a laptop CPU; ``options`` override those settings."""
    from .pipeline import convert_dataset, demo_options, staged_output, write_demo_data

    preflight(out, overwrite=overwrite, options=options)
    opts = options_from(out, {"seed": seed, **options}, base=demo_options(Path(out)))
    check_paths(opts)
    import_tensorflow("convert", verbose=verbose)
    obs = _observer(progress)
    obs.step(training_device())
    with staged_output(Path(out), overwrite=overwrite) as stage:
        obs.step(f"writing the demo dataset to {Path(out) / 'demo_data'}")
        data = write_demo_data(stage, seed=seed)
        report = convert_dataset(data, dataclasses.replace(opts, out_dir=stage), obs, stop_request)
    return ConvertResult.from_report(report, Path(out).absolute())


def __getattr__(name: str) -> Any:
    if name == "OPTION_NAMES":
        from .options import option_names

        return option_names()
    raise AttributeError(name)


__all__ = ["ConvertResult", "demo", "import_tensorflow", "options_from", "quantize", "train"]
