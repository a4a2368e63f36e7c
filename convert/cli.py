"""`edgecls convert` and `edgecls tune`: options, progress display and exit codes over edgecls.convert.api.

Each option's default comes from the configuration object it sets (edgecls.convert.options) and it sits in that
object's help panel; `_option_values` is the one place a command's parameters become those options' values.
Importing this module is cheap (Typer, the options and the two registries); TensorFlow loads when a command runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from edgecls.cli.common import examples, project_errors, verbose
from edgecls.errors import EXIT_VERDICT

from .choices import COLORS, FLIPS, IO_TYPES, OPTIMIZERS, QUANT_MODES, STRATEGIES, TARGETS
from .int8methods import DEFAULT_INT8_METHOD, INT8_METHODS
from .models import ARCHITECTURES
from .options import (
    ConvertOptions,
    DataOptions,
    DistillOptions,
    ExportOptions,
    GateOptions,
    ModelOptions,
    TrainConfig,
    TuneOptions,
    option_names,
)

if TYPE_CHECKING:
    from .progress import RichObserver


def _choices(name: str, values: Any) -> Any:
    """A Typer choice from the names the library knows (a new architecture or int8 method shows up by itself)."""
    return Enum(name, {value.replace("-", "_"): value for value in values}, type=str)  # type: ignore[misc]


Arch = _choices("Arch", ARCHITECTURES)
Int8MethodChoice = _choices("Int8MethodChoice", INT8_METHODS)
Color = _choices("Color", COLORS)
Quant = _choices("Quant", QUANT_MODES)
IoType = _choices("IoType", IO_TYPES)
Strategy = _choices("Strategy", STRATEGIES)
Flip = _choices("Flip", FLIPS)
Optimizer = _choices("Optimizer", OPTIMIZERS)
Target = _choices("Target", TARGETS)


class Resize(str, Enum):  # edgecls.model.preprocess.RESIZE_MODES (that module loads numpy)
    squash = "squash"
    center_crop = "center-crop"
    letterbox = "letterbox"


class ClassWeights(str, Enum):
    none = "none"
    auto = "auto"


# One help panel per configuration object; a model trained elsewhere has its own (--calibration and what only it
# reads: its labels and normalisation, DataOptions' labels/mean/std), and tune's search its own.
PANELS: dict[type, str] = {
    ModelOptions: "Model",
    DataOptions: "Data",
    TrainConfig: "Training",
    DistillOptions: "Distillation",
    ExportOptions: "Int8 export",
    GateOptions: "Parity gate and report",
    TuneOptions: "Search and budgets",
}
EXTERNAL = "A model trained elsewhere (--calibration)"


def _in(group: type, *decls: str, **kwargs: Any) -> Any:
    """A typer.Option shown in the help panel of the configuration object it sets."""
    return typer.Option(*decls, rich_help_panel=PANELS[group], **kwargs)


def _split_text(split: tuple[float, ...]) -> str:
    """A split as --split writes it: (0.7, 0.15, 0.15) -> "70,15,15"."""
    return ",".join(f"{100 * part:g}" for part in split)


SPLIT = _split_text(DataOptions.split)
CONVERT_EXAMPLES = examples(
    "edgecls convert --demo --out demo-run",
    "edgecls convert photos/ --out run",
    "edgecls convert photos/ --out run --arch mobilenet_v2 --epochs 20 --target edgetpu",
    "edgecls convert photos/ --out run --int8-method int8-tune --overwrite",
    "edgecls convert my_model.keras --calibration photos/ --out run",
)
TUNE_EXAMPLES = examples(
    "edgecls tune photos/ --out tune-run --trials 20 --budget-ms 30 --profile rpi4",
    "edgecls tune photos/ --out tune-run --arch mobilenet_v1 --max-size-kb 500 --timeout 60",
)
_METHODS_HELP = "; ".join(f"{m.name}: {m.summary}" for m in INT8_METHODS.values())


def convert(
    ctx: typer.Context,
    source: Annotated[
        Path | None,
        typer.Argument(
            help="Dataset folder (DATA/<class>/*.jpg, or train/ val/ and optionally test/), or a "
            ".keras/.h5/SavedModel to quantise with --calibration.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Output folder for model.tflite, report and plots.")] = Path(
        "edgecls-out"
    ),
    demo: Annotated[
        bool,
        typer.Option(
            "--demo",
            help="Generate a shapes dataset and run the whole job on it; other "
            "flags given override the demo's settings.",
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a finished run in --out (the whole folder).")
    ] = False,
    calibration: Annotated[
        Path | None,
        typer.Option(
            help="Images (class folders) to calibrate and verify an external model.", rich_help_panel=EXTERNAL
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="Label file for an external model (default: calibration folder names).", rich_help_panel=EXTERNAL
        ),
    ] = DataOptions.labels,
    mean: Annotated[
        float | None, typer.Option(help="External model: the mean it subtracts from pixels.", rich_help_panel=EXTERNAL)
    ] = DataOptions.mean,
    std: Annotated[
        float | None, typer.Option(help="External model: the std it divides pixels by.", rich_help_panel=EXTERNAL)
    ] = DataOptions.std,
    arch: Annotated[Arch, _in(ModelOptions, help="Architecture.")] = ModelOptions.arch,
    input_size: Annotated[
        int | None, _in(ModelOptions, min=16, help="Square input size (default per architecture).")
    ] = ModelOptions.input_size,
    color: Annotated[
        Color, _in(ModelOptions, help="Model colour input; grayscale is a third of the input work.")
    ] = ModelOptions.color,
    alpha: Annotated[
        float | None,
        _in(
            ModelOptions,
            help="MobileNet width multiplier (default: what a --weights file names, else 0.25 for mobilenet_v1, 1.0 for the others).",
            show_default=False,
        ),
    ] = ModelOptions.alpha,
    weights: Annotated[
        str, _in(ModelOptions, help="MobileNet weights: imagenet, none, or a local .h5/.keras file.")
    ] = ModelOptions.weights,
    width: Annotated[int, _in(ModelOptions, help="compact-cnn: filters of the first stage.")] = ModelOptions.width,
    depth: Annotated[int, _in(ModelOptions, help="compact-cnn: number of stages.")] = ModelOptions.depth,
    separable: Annotated[
        bool, _in(ModelOptions, help="compact-cnn: depthwise-separable blocks.")
    ] = ModelOptions.separable,
    dropout: Annotated[float, _in(ModelOptions, help="Dropout before the classifier.")] = ModelOptions.dropout,
    target: Annotated[
        Target,
        _in(
            ModelOptions,
            help="edgetpu: Edge-TPU-friendly build, pre-flight, and edgetpu_compiler when installed. imx500: also the Raspberry Pi AI Camera's package (RUN/imx500/, its own parity gate; needs Java 17, the toolchain is installed on first use).",
        ),
    ] = ModelOptions.target,
    split: Annotated[str, _in(DataOptions, help="train,val,test percentages.")] = SPLIT,
    extra_data: Annotated[
        list[Path] | None,
        _in(
            DataOptions,
            "--extra-data",
            help="More class folders for training only, e.g. frames from edgecls run --collect sorted by a person (repeatable).",
        ),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        _in(
            DataOptions,
            "--cache-dir",
            help="Where decoded images are kept between runs (default: $EDGECLS_CACHE_DIR, else ~/.cache/edgecls/data; `edgecls cache` lists and clears it).",
            show_default=False,
        ),
    ] = DataOptions.cache_dir,
    cache: Annotated[
        bool,
        _in(
            DataOptions,
            "--cache/--no-cache",
            help="Keep decoded images on disk between runs; --no-cache decodes them into memory for this run only (memory then grows with the number of images).",
        ),
    ] = DataOptions.cache,
    resize: Annotated[Resize, _in(DataOptions, help="How the device fits frames to the input.")] = DataOptions.resize,
    seed: Annotated[
        int, _in(TrainConfig, help="Seed for the split, weight initialisation, shuffling and augmentation.")
    ] = TrainConfig.seed,
    epochs: Annotated[
        int, _in(TrainConfig, min=1, help="Training epochs (the head, for transfer models).")
    ] = TrainConfig.epochs,
    fine_tune_epochs: Annotated[
        int, _in(TrainConfig, min=0, help="Transfer models: fine-tuning epochs.")
    ] = TrainConfig.fine_tune_epochs,
    fine_tune_layers: Annotated[
        int, _in(TrainConfig, min=0, help="Transfer models: top base layers to unfreeze.")
    ] = TrainConfig.fine_tune_layers,
    batch_size: Annotated[int, _in(TrainConfig, min=1)] = TrainConfig.batch_size,
    learning_rate: Annotated[
        float, _in(TrainConfig, help="Learning rate (fine-tuning uses a tenth).")
    ] = TrainConfig.learning_rate,
    optimizer: Annotated[
        Optimizer,
        _in(
            TrainConfig,
            help="adam, or sgd with Nesterov momentum 0.9 (about 10x the learning rate; keep adam for transfer models, whose fine-tuning collapsed with sgd).",
        ),
    ] = TrainConfig.optimizer,
    label_smoothing: Annotated[float, _in(TrainConfig, min=0.0, max=0.99)] = TrainConfig.label_smoothing,
    augment: Annotated[
        float, _in(TrainConfig, min=0.0, max=3.0, help="Augmentation strength (0 = off).")
    ] = TrainConfig.augment,
    mixup: Annotated[
        float, _in(TrainConfig, min=0.0, max=10.0, help="MixUp strength, the Beta(a, a) alpha (0 = off; try 0.2).")
    ] = TrainConfig.mixup,
    flip: Annotated[
        Flip,
        _in(
            TrainConfig,
            help="Mirror training images left-right: auto does for photos, not for grayscale images of 32 px or less (a mirrored digit is not the same digit).",
        ),
    ] = TrainConfig.flip,
    weight_decay: Annotated[
        float,
        _in(TrainConfig, min=0.0, max=0.99, help="Decoupled weight decay of kernels (0 = none; with Adam, AdamW)."),
    ] = TrainConfig.weight_decay,
    patience: Annotated[int, _in(TrainConfig, min=1, help="Early-stopping patience in epochs.")] = TrainConfig.patience,
    class_weights: Annotated[
        ClassWeights, _in(TrainConfig, help="'auto' weighs classes by inverse frequency.")
    ] = "auto" if TrainConfig.class_weights else "none",
    strategy: Annotated[
        Strategy, _in(TrainConfig, help="tf.distribute strategy (multi-worker reads TF_CONFIG).")
    ] = TrainConfig.strategy,
    deterministic: Annotated[
        bool,
        _in(
            TrainConfig,
            "--deterministic",
            help="Deterministic TensorFlow ops: --seed reproduces the model exactly (slower).",
        ),
    ] = ConvertOptions.deterministic,
    teacher: Annotated[
        Path | None,
        _in(
            DistillOptions,
            help="Distil from this model: an earlier convert output folder (same data, split "
            "and seed) or a .keras file; the training targets blend in its probabilities.",
        ),
    ] = DistillOptions.teacher,
    teacher_weight: Annotated[
        float, _in(DistillOptions, help="With --teacher: the teacher's share of the targets, in (0, 1].")
    ] = DistillOptions.teacher_weight,
    quant: Annotated[Quant, _in(ExportOptions, help="Quantisation of the exported model.")] = ExportOptions.quant,
    io: Annotated[
        IoType,
        _in(
            ExportOptions,
            "--io",
            help="int8 models: input/output type (uint8 is what MediaPipe and other runtimes take).",
        ),
    ] = ExportOptions.io,
    calibration_samples: Annotated[
        int, _in(ExportOptions, min=1, help="Representative images for int8 calibration.")
    ] = ExportOptions.calibration_samples,
    int8_method: Annotated[
        Int8MethodChoice,
        _in(ExportOptions, "--int8-method", help=f"How the float model is fitted to int8. {_METHODS_HELP}."),  # type: ignore[valid-type]
    ] = ExportOptions.int8_method,
    int8_tune_epochs: Annotated[
        int, _in(ExportOptions, min=1, help="Epochs of --int8-method int8-tune over the training images.")
    ] = ExportOptions.int8_tune_epochs,
    qat_epochs: Annotated[
        int, _in(ExportOptions, min=1, help="Epochs of --int8-method qat.")
    ] = ExportOptions.qat_epochs,
    # The three switches the int8 method replaced, kept working for existing scripts (not shown in --help).
    qat: Annotated[bool, typer.Option("--qat", hidden=True)] = False,
    int8_tune: Annotated[bool, typer.Option("--int8-tune", hidden=True)] = False,
    bias_correction: Annotated[bool | None, typer.Option("--bias-correction/--no-bias-correction", hidden=True)] = None,
    max_drop: Annotated[
        float, _in(GateOptions, min=0.0, help="Largest allowed top-1 drop of the quantised model, in points.")
    ] = GateOptions.max_drop,
    min_agreement: Annotated[
        float,
        _in(
            GateOptions,
            min=0.0,
            max=1.0,
            help="Smallest share of test images on which the quantised and the float model agree on the top-1 class.",
        ),
    ] = GateOptions.min_agreement,
    baseline: Annotated[
        bool, _in(GateOptions, help="Also train the seed-cnn baseline to compare against.")
    ] = GateOptions.baseline,
) -> None:
    """Train a compact CNN or MobileNet transfer model, export it as a verified int8 TFLite model, and report.

    The run is built beside --out and swapped in whole when it is done. Exit code 3: the parity gate failed (the
    model is still written). A first Ctrl-C while training stops it and exports the best weights so far. SIGTERM
    (or SIGHUP) ends it at once: one error line, exit code 143 (129), and --out keeps a whole run or none.
    """
    with _native_log(), project_errors(), _ends_on_termination(out):
        values = _option_values(ctx.params)
        values["int8_method"] = _int8_method(
            values["int8_method"], qat=qat, int8_tune=int8_tune, bias_correction=bias_correction
        )
        # The flags the user gave (the int8 method counts as given when one of its old switches was): the demo's
        # settings, or the recipe for the model (edgecls.convert.recipes), fill the rest.
        given = {k: v for k, v in values.items() if _given(ctx, k)}
        if values["int8_method"] != DEFAULT_INT8_METHOD:
            given["int8_method"] = values["int8_method"]
        from . import api
        from .progress import RichObserver

        observer = RichObserver()
        result = _run_convert(
            observer, source, out, demo=demo, calibration=calibration, overwrite=overwrite, values=values, given=given
        )
        if isinstance(result, api.WorkerResult):
            observer.console.print(str(result))
            return
        _summary(observer, dict(result.report), out, demo)
    if not result.passed:
        typer.echo(f"error: {result.gate_message}", err=True)
        raise typer.Exit(code=EXIT_VERDICT)


_FROM_CLI: dict[str, Callable[[Any], Any]] = {
    "split": lambda text: _parse_split(text),
    "extra_data": lambda folders: tuple(folders or ()),
    "class_weights": lambda choice: _plain(choice) == ClassWeights.auto.value,
}


def _option_values(params: Mapping[str, Any]) -> dict[str, Any]:
    """A command's parameters that are options (`options.option_names`), as the configuration objects take them:
    a choice as its value, --split as three fractions, --class-weights as a switch, --extra-data as a tuple. The one
    place the command line's values become options; `ConvertOptions.updated` puts each in its group."""
    return {name: _FROM_CLI.get(name, _plain)(params[name]) for name in option_names() if name in params}


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


def _run_convert(
    observer: RichObserver,
    source: Path | None,
    out: Path,
    *,
    demo: bool,
    calibration: Path | None,
    overwrite: bool,
    values: dict[str, Any],
    given: dict[str, Any],
) -> Any:
    """The job the command line asks for: the demo or training get the flags given (the demo's settings or the
    recipe fill the rest), quantising a model from elsewhere every option."""
    from . import api

    common = {"overwrite": overwrite, "progress": observer, "verbose": verbose()}
    if demo:
        return _with_early_stop(lambda request: api.demo(out, stop_request=request, **common, **given), observer)
    if source is None:
        raise typer.BadParameter("give a dataset folder (or a model with --calibration), or use --demo")
    if calibration is not None:
        return api.quantize(source, calibration, out, **common, **values)
    return _with_early_stop(lambda request: api.train(source, out, stop_request=request, **common, **given), observer)


def _native_log() -> contextlib.AbstractContextManager[None]:
    """TensorFlow's native log lines held back at the default verbosity (-v shows them; see .tflog)."""
    from .tflog import held_back

    return contextlib.nullcontext() if verbose() else held_back()


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was given on the command line (not left at its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _int8_method(chosen: str, *, qat: bool, int8_tune: bool, bias_correction: bool | None) -> str:
    """--int8-method, or what the old switches (--qat, --int8-tune, --no-bias-correction) meant."""
    from edgecls.errors import ConfigError

    if qat and int8_tune:
        raise ConfigError("--int8-tune and --qat are two ways to fit the model to int8: choose one --int8-method")
    old = "qat" if qat else "int8-tune" if int8_tune else "ptq" if bias_correction is False else None
    if old is None:
        return chosen
    if chosen != DEFAULT_INT8_METHOD and chosen != old:
        raise ConfigError(f"--int8-method {chosen} and the older switch for {old} disagree: give one --int8-method")
    return old


def _parse_split(text: str) -> tuple[float, float, float]:
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        raise typer.BadParameter(f"--split expects three numbers like 70,15,15 (received {text!r})") from None
    if len(parts) != 3 or sum(parts) <= 0:
        raise typer.BadParameter(f"--split expects three numbers like 70,15,15 (received {text!r})")
    total = sum(parts)
    return (parts[0] / total, parts[1] / total, parts[2] / total)


def _summary(observer: RichObserver, report: dict[str, Any], out: Path, demo: bool) -> None:
    """What the run gave, after its progress: the verdict line and its warnings, the numbers to compare with, the
    model's size and how to try it, then what the target (IMX500, Edge TPU) adds."""
    console = observer.console
    _verdict_line(console, report)
    for warning in report.get("warnings", []):
        console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
    _comparisons(console, report)
    graph = report.get("int8_graph_bytes") or report["int8_bytes"]
    console.print(
        f"{report['int8_bytes'] / 1024:.1f} KiB model ({graph / report['float_tflite_bytes']:.2f}x the float "
        f"network), {report['timing']['total_s']:.0f} s. Report: {out / 'report.md'}",
        soft_wrap=True,
    )
    if report["skipped"]:
        console.print(f"{len(report['skipped'])} files skipped (listed in the report)")
    sample = next((p for p in sorted((out / "demo_data").rglob("*.png"))), None) if demo else None
    hint = f" {sample}" if sample else " IMAGE"
    console.print(f"Try it: edgecls classify {out / 'model.tflite'}{hint}", soft_wrap=True)
    if report.get("imx500"):
        from .imx500 import summary_line

        console.print(summary_line(report["imx500"]), soft_wrap=True)
    if report.get("edgetpu"):
        _edgetpu_summary(console, report["edgetpu"], out)


def _verdict_line(console: Any, report: dict[str, Any]) -> None:
    key = "int8" if report["quantization"]["mode"] == "int8" else "tflite"
    verdict = (
        "[red]FAILED[/]"
        if not report["passed"]
        else "[yellow]passed, but the model LEARNED NOTHING (see the warning)[/]"
        if report.get("learned_nothing")
        else "[green]passed[/]"
    )
    console.print(
        f"\n[bold]{report['model']['arch']}[/]: float top-1 {100 * report['float']['top1']:.1f}%, "
        f"{report['quantization']['mode']} top-1 {100 * report[key]['top1']:.1f}% "
        f"(drop {report['drop_points']:.2f} pt, agreement {100 * report['agreement']:.1f}%) - parity gate {verdict}",
        soft_wrap=True,
    )


def _comparisons(console: Any, report: dict[str, Any]) -> None:
    """The numbers beside the model's: post-training int8 before QAT, the baseline, the image cache, the teacher,
    and where training stopped early."""
    if report.get("ptq"):
        ptq = report["ptq"]
        console.print(
            f"post-training int8 before QAT: top-1 {100 * ptq['int8_top1']:.1f}% (drop {ptq['drop_points']:.2f} pt, "
            f"agreement {100 * ptq['agreement']:.1f}%)",
            soft_wrap=True,
        )
    if report.get("baseline"):
        console.print(
            f"baseline (the tutorial CNN, --arch seed-cnn, same split): float top-1 "
            f"{100 * report['baseline']['float_top1']:.1f}%"
        )
    if report.get("image_cache"):
        from .cache import cache_summary

        console.print(cache_summary(report["image_cache"]), soft_wrap=True)
    if report.get("teacher"):
        console.print(f"teacher (distilled from): float top-1 {100 * report['teacher']['test_top1']:.1f}%")
    stopped = (report.get("history") or {}).get("stopped_early")
    if stopped:
        console.print(
            f"training was stopped early ({stopped['stage']} epoch {stopped['epoch']} of {stopped['epochs']})"
        )


def _edgetpu_summary(console: Any, tpu: dict[str, Any], out: Path) -> None:
    """The Edge TPU pre-flight's line, then the compiled model, the compiler's error, or the command to compile."""
    check = tpu["preflight"]
    first = check["first_cpu_op"]
    console.print(
        f"Edge TPU pre-flight: {check['status']}, {check['edgetpu_ops']} of {len(check['ops'])} ops on the Edge TPU"
        + (f"; first CPU op #{first['index']} {first['op']}: {first['reason']}" if first else ""),
        soft_wrap=True,
    )
    compiled = tpu.get("compiler")
    if compiled is None:
        console.print(
            f"edgetpu_compiler is not installed here; on an x86-64 Linux machine run, in {out}: "
            f"[bold]{tpu['command']}[/]",
            soft_wrap=True,
        )
    elif tpu.get("compiled_model"):
        console.print(
            f"compiled: {out / tpu['compiled_model']} ({compiled['edgetpu_ops']} ops on the Edge TPU, "
            f"{compiled['cpu_ops']} on the CPU; on-chip memory {compiled['on_chip_memory']}, off-chip "
            f"{compiled['off_chip_memory']})",
            soft_wrap=True,
        )
    else:
        console.print(f"[red]edgetpu_compiler failed[/]: {compiled.get('error')}", soft_wrap=True)


@contextlib.contextmanager
def _on_ctrl_c(take: Callable[[], bool], message: str, observer: RichObserver) -> Iterator[None]:
    """A SIGINT handler for the block: a Ctrl-C that ``take()`` accepts prints ``message`` and lets the work stop
    at its next safe point (asynchronous KeyboardInterrupts can be lost inside TensorFlow tracing); one it refuses
    interrupts at once."""
    import signal

    def on_sigint(signum: int, frame: Any) -> None:
        if not take():
            raise KeyboardInterrupt
        observer.console.print(message)

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # ignored at start (a background job): it stays so, as
        yield  # for edgecls run (docs/device.md)
        return
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _ends_on_termination(out: Path) -> Iterator[None]:
    """SIGTERM (`kill`, a service manager, a CI timeout) and SIGHUP (the terminal or SSH session went away) end the
    command as an interrupting Ctrl-C does: an exception unwinds the converter, whose staging folder removes itself,
    then one error line and exit code 128 + the signal's number (143, 129). Any exception after such a signal counts
    as that ending (TensorFlow may wrap the one raised inside it); a later signal raises again unless the command is
    already ending. A signal inherited as ignored (nohup) stays ignored."""
    import signal
    import threading

    from edgecls.cli.common import error

    received: list[int] = []
    ending: list[bool] = []

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signum)
        if not ending:
            raise KeyboardInterrupt

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for name in ("SIGTERM", "SIGHUP"):
            sig = getattr(signal, name, None)
            if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:
                previous[sig] = signal.signal(sig, on_signal)

    def end() -> None:
        ending.append(True)
        error(
            f"terminated by {signal.Signals(received[0]).name}; {out} keeps a whole run or none (the unfinished "
            "run was removed)"
        )
        raise typer.Exit(code=128 + received[0])

    try:
        yield
    except BaseException:
        if not received:
            raise
        end()
    else:
        if received:  # it came where nothing raised it (a finished run): still the exit code a signal gives
            end()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _with_ctrl_c_flag(work: Any, observer: RichObserver) -> Any:
    """Run ``work(should_stop)``: the first Ctrl-C asks the work to stop at its next safe point (see
    edgecls.convert.training.stop_check); a second one interrupts at once."""
    import threading

    flag = threading.Event()

    def take() -> bool:
        first = not flag.is_set()
        flag.set()
        return first

    with _on_ctrl_c(take, "stopping after this training batch (Ctrl-C again to stop at once)", observer):
        return work(flag.is_set)


def _with_early_stop(work: Any, observer: RichObserver) -> Any:
    """Run ``work(stop_request)``: a first Ctrl-C while the model trains ends training after the current batch and
    goes on to export and verify the best weights so far; any other Ctrl-C (a second one, or one outside training)
    interrupts at once."""
    from .training import StopRequest

    request = StopRequest()
    with _on_ctrl_c(
        request.request,
        "stopping training after this batch; the best weights so far will be exported "
        "and verified (Ctrl-C again to abort)",
        observer,
    ):
        return work(request)


def tune(
    ctx: typer.Context,
    data: Annotated[
        Path, typer.Argument(help="Dataset folder (DATA/<class>/*.jpg or train/ val/ and optionally test/).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Study, trials, table, plot and the chosen model.")] = Path(
        "edgecls-tune"
    ),
    arch: Annotated[Arch, _in(ModelOptions, help="Architecture to search.")] = ModelOptions.arch,
    trials: Annotated[
        int, _in(TuneOptions, min=1, help="Trials in the study (finished ones count when resuming).")
    ] = TuneOptions.trials,
    budget_ms: Annotated[
        float | None, _in(TuneOptions, min=0.0, help="Largest p90 latency (edgecls bench, x profile factor).")
    ] = TuneOptions.budget_ms,
    max_size_kb: Annotated[
        float | None, _in(TuneOptions, min=0.0, help="Largest int8 model file.")
    ] = TuneOptions.max_size_kb,
    timeout: Annotated[
        float | None, _in(TuneOptions, min=0.1, help="Stop starting trials after this many minutes.")
    ] = TuneOptions.timeout_min,
    profile: Annotated[
        str | None, _in(TuneOptions, help="Device profile whose latency_factor scales the latency.")
    ] = TuneOptions.profile,
    max_epochs: Annotated[int, _in(TuneOptions, min=1, help="Most epochs a trial may train.")] = TuneOptions.max_epochs,
    input_sizes: Annotated[
        str | None, _in(TuneOptions, help="Comma-separated input sizes to search (default per arch).")
    ] = None,
    bench_threads: Annotated[
        int, _in(TuneOptions, min=1, help="Interpreter threads for the latency measurement.")
    ] = TuneOptions.bench_threads,
    color: Annotated[Color, _in(ModelOptions, help="Model colour input.")] = ModelOptions.color,
    weights: Annotated[
        str, _in(ModelOptions, help="MobileNet weights: imagenet, none, or a local .h5/.keras file.")
    ] = ModelOptions.weights,
    resize: Annotated[Resize, _in(DataOptions, help="How the device fits frames to the input.")] = DataOptions.resize,
    # tune's own default: int8 in and out, where convert's is uint8 (for MediaPipe; see ExportOptions.io)
    io: Annotated[IoType, _in(ExportOptions, "--io", help="int8 model input/output type.")] = "int8",
    calibration_samples: Annotated[
        int, _in(ExportOptions, min=1, help="Representative images for int8 calibration.")
    ] = ExportOptions.calibration_samples,
    max_drop: Annotated[
        float, _in(GateOptions, min=0.0, help="Parity gate of the exported model, in points.")
    ] = GateOptions.max_drop,
    min_agreement: Annotated[
        float,
        _in(
            GateOptions,
            min=0.0,
            max=1.0,
            help="Parity gate: the least share of test images on which int8 and float agree on the top-1 class.",
        ),
    ] = GateOptions.min_agreement,
    split: Annotated[str, _in(DataOptions, help="train,val,test percentages.")] = SPLIT,
    seed: Annotated[
        int, _in(TuneOptions, help="Seed of the sampler, the split and each trial's training.")
    ] = TuneOptions.seed,
    cache_dir: Annotated[
        Path | None,
        _in(
            DataOptions,
            "--cache-dir",
            help="Where decoded images are kept between runs (see edgecls convert).",
            show_default=False,
        ),
    ] = DataOptions.cache_dir,
    cache: Annotated[
        bool,
        _in(DataOptions, "--cache/--no-cache", help="Keep decoded images on disk between runs (see edgecls convert)."),
    ] = DataOptions.cache,
) -> None:
    """Search hyperparameters for the most accurate int8 model within a latency and size budget (Optuna).

    Resumable: run the same command again to continue a study in OUT/study.db. Ctrl-C keeps the finished trials.
    """
    from .progress import TuneObserver

    observer = TuneObserver()
    with _native_log(), project_errors():
        from .api import import_tensorflow

        import_tensorflow("tune", verbose=verbose())  # quiet: e.g. retracing notes between trials of other shapes
        from .tune import tune as run_tune

        options = _tune_options(ctx.params, out)
        try:
            summary = _with_ctrl_c_flag(lambda stop: run_tune(data, options, observer, should_stop=stop), observer)
        except KeyboardInterrupt:
            observer.console.print(
                f"interrupted: the finished trials are kept in {out / 'study.db'}; run the same "
                "command again to resume",
                soft_wrap=True,
            )
            raise typer.Exit(code=130) from None
    _tune_summary(observer, summary, out)


def _tune_options(params: Mapping[str, Any], out: Path) -> TuneOptions:
    """What tune is told: the conversion settings it keeps fixed (`_option_values`), the search and its budgets."""
    from .options import ConvertOptions

    factor = _latency_factor(params["profile"])
    sizes = _input_sizes(params["input_sizes"])
    return TuneOptions(
        base=ConvertOptions.create(out, **_option_values(params)),
        trials=params["trials"],
        budget_ms=params["budget_ms"],
        max_size_kb=params["max_size_kb"],
        timeout_min=params["timeout"],
        seed=params["seed"],
        max_epochs=params["max_epochs"],
        latency_factor=factor,
        profile=params["profile"],
        bench_threads=params["bench_threads"],
        input_sizes=sizes,
    )


def _latency_factor(profile: str | None) -> float:
    """How much slower than this machine the --profile's device is (1.0 without a profile)."""
    if not profile:
        return 1.0
    from edgecls.device.profiles import load_profile

    prof = load_profile(profile)
    if prof.latency_factor is None:
        raise typer.BadParameter(f"profile {prof.name} has no latency_factor to scale latency with")
    return prof.latency_factor


def _input_sizes(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise typer.BadParameter(f"--input-sizes expects numbers like 64,96 (received {text!r})") from None


def _tune_summary(observer: Any, summary: dict[str, Any], out: Path) -> None:
    """The chosen trial and its test-split numbers, where the results are, and exit code 3 if its gate failed."""
    chosen = summary["chosen"]
    report = summary["report"]
    observer.console.print(
        f"\n[bold]chosen: trial {chosen['number']}[/]: int8 val top-1 {100 * chosen['accuracy']:.1f}%, "
        f"{chosen['latency_ms']:.2f} ms, {chosen['size_kb']:.0f} KB; on the test split: float "
        f"{100 * report['float']['top1']:.1f}%, int8 {100 * report['int8']['top1']:.1f}% "
        f"(agreement {100 * report['agreement']:.1f}%). Pareto front: trials {summary['pareto_front']}.",
        soft_wrap=True,
    )
    observer.console.print(
        f"Table: {out / 'tuning.md'}; plot: {out / 'pareto.png'}; model: {out / 'model.tflite'}", soft_wrap=True
    )
    if not report["passed"]:
        typer.echo(f"error: {report['gate_message']}", err=True)
        raise typer.Exit(code=EXIT_VERDICT)


cache_app = typer.Typer(
    help="The decoded-image cache that convert and tune keep between runs: list or clear it.",
    no_args_is_help=True,
    add_completion=False,
    epilog=examples(
        "edgecls cache list", "edgecls cache clear", "edgecls cache list --cache-dir /data/edgecls-cache --json"
    ),
)
CACHE_DIR_OPTION = typer.Option(
    "--cache-dir",
    help="The cache folder (default: $EDGECLS_CACHE_DIR, else ~/.cache/edgecls/data).",
    show_default=False,
)


def _image_cache(cache_dir: Path | None) -> Any:
    from .cache import ImageCache, default_cache_dir, default_max_bytes

    return ImageCache(cache_dir or default_cache_dir(), default_max_bytes())


@cache_app.command("list")
def cache_list(
    cache_dir: Annotated[Path | None, CACHE_DIR_OPTION] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per entry.")] = False,
) -> None:
    """The cached datasets, least recently used first: folder, input size, images, size on disk, last use."""
    import json
    import time

    with project_errors():
        cache = _image_cache(cache_dir)
        entries = sorted(cache.entries(), key=lambda e: e["last_used"])
    if json_out:
        for entry in entries:
            typer.echo(json.dumps(entry))
        return
    total = sum(e["bytes"] for e in entries)
    typer.echo(
        f"{cache.directory}: {len(entries)} entries, {total / 1024**2:.1f} MiB of at most "
        f"{cache.max_bytes / 1024**3:.0f} GiB (EDGECLS_CACHE_MAX_GB)"
    )
    for e in entries:
        shape = "x".join(str(v) for v in e["shape"] or [])
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["last_used"]))
        typer.echo(
            f"  {e['key']}  {e['root']} ({e['name']}), {shape}, {e['images']} images, "
            f"{e['bytes'] / 1024**2:.1f} MiB, last used {used}"
        )


@cache_app.command("clear")
def cache_clear(
    keys: Annotated[
        list[str] | None,
        typer.Argument(help="Entries to remove (from `edgecls cache list`); none: all of them.", show_default=False),
    ] = None,
    cache_dir: Annotated[Path | None, CACHE_DIR_OPTION] = None,
) -> None:
    """Remove cached datasets (all, or the KEYS given) and what killed runs left; entries in use are kept."""
    with project_errors():
        cache = _image_cache(cache_dir)
        removed, freed, busy = cache.clear(keys or ())
    typer.echo(
        f"removed {removed} entries ({freed / 1024**2:.1f} MiB) from {cache.directory}"
        + (f"; {len(busy)} in use by a running convert kept" if busy else "")
    )
