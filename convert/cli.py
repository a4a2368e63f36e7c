"""The `edgecls convert` command: options, progress display and exit codes over convert.pipeline.

Importing this module is cheap (Typer only); TensorFlow loads when the command runs.
"""

from __future__ import annotations

import contextlib
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Optional

import typer

from edgecls.errors import EXIT_VERDICT


class Arch(str, Enum):
    compact_cnn = "compact-cnn"
    seed_cnn = "seed-cnn"
    mobilenet_v1 = "mobilenet_v1"
    mobilenet_v2 = "mobilenet_v2"
    mobilenet_v3_small = "mobilenet_v3_small"


class Color(str, Enum):
    rgb = "rgb"
    grayscale = "grayscale"


class Quant(str, Enum):
    int8 = "int8"
    float16 = "float16"
    dynamic = "dynamic"
    none = "none"


class IoType(str, Enum):
    int8 = "int8"
    uint8 = "uint8"


class Strategy(str, Enum):
    default = "default"
    mirrored = "mirrored"
    multi_worker = "multi-worker"


class Resize(str, Enum):
    squash = "squash"
    center_crop = "center-crop"
    letterbox = "letterbox"


class Optimizer(str, Enum):
    adam = "adam"
    sgd = "sgd"


class ClassWeights(str, Enum):
    none = "none"
    auto = "auto"


class RichObserver:
    """Progress for people: a bar while images decode, a line per epoch, a line per step."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self._progress: Any = None
        self._task: Any = None

    def step(self, message: str) -> None:
        self._close_bar()
        self.console.print(f"[bold cyan]>[/] {message}")

    def decoding(self, done: int, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        if self._progress is None:
            self._progress = Progress("decoding images", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                      console=self.console, transient=True)
            self._progress.start()
            self._task = self._progress.add_task("decode", total=total)
        self._progress.update(self._task, completed=done, total=total)
        if done >= total:
            self._close_bar()

    def stage(self, name: str, epochs: int) -> None:
        self._close_bar()
        if name == "int8-tune":
            self.console.print(f"[bold cyan]>[/] int8 tuning, {epochs} epochs (KL divergence to the float model)")
            return
        self.console.print(f"[bold cyan]>[/] training ({name}), up to {epochs} epochs, early stopping on val loss")

    def epoch(self, stage: str, epoch: int, epochs: int, logs: dict[str, float]) -> None:
        if "kl" in logs:
            self.console.print(f"  {stage} {epoch:3d}/{epochs}  KL {logs['kl']:.5f}")
            return
        self.console.print(
            f"  {stage} {epoch:3d}/{epochs}  loss {logs.get('loss', float('nan')):.4f}  "
            f"acc {logs.get('accuracy', float('nan')):.3f}  val_loss {logs.get('val_loss', float('nan')):.4f}  "
            f"val_acc {logs.get('val_accuracy', float('nan')):.3f}"
        )

    def _close_bar(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class Target(str, Enum):
    cpu = "cpu"
    edgetpu = "edgetpu"


def _import_tensorflow(command: str) -> Any:
    """TensorFlow, quietly; on a device install without it, one error line that says what to install."""
    from edgecls.errors import ConfigError
    from edgecls.nativelog import quiet_native_stderr

    try:
        with quiet_native_stderr():  # what TensorFlow prints while it loads
            import tensorflow
    except ImportError:
        raise ConfigError(
            f"edgecls {command} runs on the workstation and needs TensorFlow: pip install 'edgecls[convert]'"
        ) from None
    return tensorflow


def convert(
    source: Annotated[
        Optional[Path],
        typer.Argument(help="Dataset folder (DATA/<class>/*.jpg or train/ val/ [test/]), or a .keras/.h5/SavedModel "
                       "to quantise with --calibration.", show_default=False),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Output folder for model.tflite, report and plots.")] = Path("edgecls-out"),
    demo: Annotated[bool, typer.Option("--demo", help="Generate a shapes dataset and run the whole job on it.")] = False,
    calibration: Annotated[Optional[Path], typer.Option(help="Images (class folders) to calibrate and verify an external model.")] = None,
    labels: Annotated[Optional[Path], typer.Option(help="Label file for an external model (default: calibration folder names).")] = None,
    arch: Annotated[Arch, typer.Option(help="Architecture.")] = Arch.compact_cnn,
    input_size: Annotated[Optional[int], typer.Option(min=16, help="Square input size (default per architecture).")] = None,
    color: Annotated[Color, typer.Option(help="Model colour input; grayscale is a third of the input work.")] = Color.rgb,
    alpha: Annotated[float, typer.Option(help="MobileNet width multiplier.")] = 0.25,
    weights: Annotated[str, typer.Option(help="MobileNet weights: imagenet, none, or a local .h5/.keras file.")] = "imagenet",
    width: Annotated[int, typer.Option(help="compact-cnn: filters of the first stage.")] = 32,
    depth: Annotated[int, typer.Option(help="compact-cnn: number of stages.")] = 4,
    separable: Annotated[bool, typer.Option(help="compact-cnn: depthwise-separable blocks.")] = True,
    dropout: Annotated[float, typer.Option(help="Dropout before the classifier.")] = 0.2,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs (the head, for transfer models).")] = 40,
    fine_tune_epochs: Annotated[int, typer.Option(min=0, help="Transfer models: fine-tuning epochs.")] = 15,
    fine_tune_layers: Annotated[int, typer.Option(min=0, help="Transfer models: top base layers to unfreeze.")] = 30,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    learning_rate: Annotated[float, typer.Option(help="Learning rate (fine-tuning uses a tenth).")] = 1e-3,
    optimizer: Annotated[Optimizer, typer.Option(help="adam, or sgd with Nesterov momentum 0.9 (about 10x the learning rate; keep adam for transfer models, whose fine-tuning collapsed with sgd).")] = Optimizer.adam,
    label_smoothing: Annotated[float, typer.Option(min=0.0, max=0.99)] = 0.0,
    augment: Annotated[float, typer.Option(min=0.0, max=3.0, help="Augmentation strength (0 = off).")] = 1.0,
    mixup: Annotated[float, typer.Option(min=0.0, max=10.0, help="MixUp strength, the Beta(a, a) alpha (0 = off; try 0.2).")] = 0.0,
    weight_decay: Annotated[float, typer.Option(min=0.0, max=0.99, help="Decoupled weight decay of kernels (0 = none; with Adam, AdamW).")] = 0.0,
    patience: Annotated[int, typer.Option(min=1, help="Early-stopping patience in epochs.")] = 8,
    class_weights: Annotated[ClassWeights, typer.Option(help="'auto' weighs classes by inverse frequency.")] = ClassWeights.none,
    seed: Annotated[int, typer.Option(help="Seed for the split, shuffling and augmentation.")] = 0,
    split: Annotated[str, typer.Option(help="train,val,test percentages.")] = "70,15,15",
    strategy: Annotated[Strategy, typer.Option(help="tf.distribute strategy (multi-worker reads TF_CONFIG).")] = Strategy.default,
    resize: Annotated[Resize, typer.Option(help="How the device fits frames to the input.")] = Resize.squash,
    quant: Annotated[Quant, typer.Option(help="Quantisation of the exported model.")] = Quant.int8,
    io: Annotated[IoType, typer.Option("--io", help="int8 models: input/output type.")] = IoType.int8,
    calibration_samples: Annotated[int, typer.Option(min=1, help="Representative images for int8 calibration.")] = 300,
    bias_correction: Annotated[
        bool, typer.Option(help="int8: correct conv biases for the mean error of weight rounding (float model unchanged).")
    ] = True,
    int8_tune: Annotated[
        bool, typer.Option("--int8-tune", help="int8: error-compensating rounding, then fine-tune with the rounding in the "
                           "loop to match the float model (for fine-tuned MobileNets; a few minutes).")
    ] = False,
    int8_tune_epochs: Annotated[int, typer.Option(min=1, help="Epochs of --int8-tune over the training images.")] = 16,
    teacher: Annotated[
        Optional[Path], typer.Option(help="Distil from this model: an earlier convert output folder (same data, split "
                                     "and seed) or a .keras file; the training targets blend in its probabilities.")
    ] = None,
    teacher_weight: Annotated[float, typer.Option(help="With --teacher: the teacher's share of the targets, in (0, 1].")] = 0.7,
    max_drop: Annotated[float, typer.Option(min=0.0, help="Largest allowed top-1 drop of the quantised model, in points.")] = 1.0,
    min_agreement: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Smallest share of test images on which the quantised and the float "
                            "model agree on the top-1 class.")
    ] = 0.9,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a finished run in --out (the whole folder).")] = False,
    baseline: Annotated[bool, typer.Option(help="Also train the seed-cnn baseline to compare against.")] = True,
    mean: Annotated[Optional[float], typer.Option(help="External model: the mean it subtracts from pixels.")] = None,
    std: Annotated[Optional[float], typer.Option(help="External model: the std it divides pixels by.")] = None,
    target: Annotated[
        Target, typer.Option(help="edgetpu: Edge-TPU-friendly build, pre-flight, and edgetpu_compiler when installed.")
    ] = Target.cpu,
    qat: Annotated[bool, typer.Option("--qat", help="Quantisation-aware fine-tuning before the int8 export (extra: qat).")] = False,
    qat_epochs: Annotated[int, typer.Option(min=1, help="Epochs of quantisation-aware fine-tuning.")] = 5,
    deterministic: Annotated[
        bool, typer.Option("--deterministic", help="Deterministic TensorFlow ops: --seed reproduces the model exactly (slower).")
    ] = False,
) -> None:
    """Train a compact CNN or MobileNet transfer model, export it as a verified int8 TFLite model, and report."""
    import os

    from edgecls.cli import project_errors

    # TensorFlow's C++ log: INFO and WARNING, and the ERROR-level lines it prints for things that are not errors here
    # (cuInit without a GPU, a tf.data attribute from a newer graph); real failures still arrive as exceptions.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with project_errors():
        _import_tensorflow("convert")
        from dataclasses import replace

        from convert.pipeline import ConvertOptions, convert_dataset, convert_model, demo_options, write_demo_data
        from convert.training import TrainConfig

        from convert.pipeline import staged_output

        observer = RichObserver()
        if demo:
            options = replace(demo_options(out), target=target.value, qat=qat, qat_epochs=qat_epochs,
                              bias_correction=bias_correction, int8_tune=int8_tune, int8_tune_epochs=int8_tune_epochs,
                              min_agreement=min_agreement)
        else:
            if source is None:
                raise typer.BadParameter("give a dataset folder (or a model with --calibration), or use --demo")
            options = ConvertOptions(
                out_dir=out, arch=arch.value, input_size=input_size, color=color.value, alpha=alpha, weights=weights,
                width=width, depth=depth, separable=separable, dropout=dropout,
                train=TrainConfig(epochs=epochs, fine_tune_epochs=fine_tune_epochs, fine_tune_layers=fine_tune_layers,
                                  batch_size=batch_size, learning_rate=learning_rate, label_smoothing=label_smoothing,
                                  augment=augment, mixup=mixup, weight_decay=weight_decay, optimizer=optimizer.value,
                                  patience=patience, class_weights=class_weights is ClassWeights.auto, seed=seed, strategy=strategy.value),
                split=_parse_split(split), resize=resize.value, quant=quant.value, io=io.value,
                calibration_samples=calibration_samples, max_drop=max_drop, min_agreement=min_agreement,
                baseline=baseline, labels=labels,
                mean=mean, std=std, target=target.value, qat=qat, qat_epochs=qat_epochs,
                deterministic=deterministic, bias_correction=bias_correction, int8_tune=int8_tune,
                int8_tune_epochs=int8_tune_epochs, teacher=teacher, teacher_weight=teacher_weight,
            )
            data_dir = source
        # The run is built in a sibling folder and swapped in whole at the end: --out holds the old run or the new
        # one, never a mix (an interrupt or an error leaves the old one as it was).
        with staged_output(out, overwrite=overwrite) as stage:
            options = replace(options, out_dir=stage)
            if demo:
                observer.step(f"writing the demo dataset to {out / 'demo_data'}")
                data_dir = write_demo_data(stage, seed=seed)
            if calibration is not None:
                report = convert_model(data_dir, calibration, options, observer)
            else:
                report = _with_early_stop(lambda request: convert_dataset(data_dir, options, observer, request),
                                          observer)
        _summary(observer, report, out, demo)
    if not report["passed"]:
        typer.echo(f"error: {report['gate_message']}", err=True)
        raise typer.Exit(code=EXIT_VERDICT)


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
    key = "int8" if report["quantization"]["mode"] == "int8" else "tflite"
    console = observer.console
    verdict = ("[red]FAILED[/]" if not report["passed"] else
               "[yellow]passed, but the model LEARNED NOTHING (see the warning)[/]" if report.get("learned_nothing")
               else "[green]passed[/]")
    console.print(
        f"\n[bold]{report['model']['arch']}[/]: float top-1 {100 * report['float']['top1']:.1f}%, "
        f"{report['quantization']['mode']} top-1 {100 * report[key]['top1']:.1f}% "
        f"(drop {report['drop_points']:.2f} pt, agreement {100 * report['agreement']:.1f}%) - parity gate {verdict}",
        soft_wrap=True,
    )
    for warning in report.get("warnings", []):
        console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
    if report.get("ptq"):
        ptq = report["ptq"]
        console.print(f"post-training int8 before QAT: top-1 {100 * ptq['int8_top1']:.1f}% (drop {ptq['drop_points']:.2f} pt, "
                      f"agreement {100 * ptq['agreement']:.1f}%)", soft_wrap=True)
    if report.get("baseline"):
        console.print(f"seed-cnn baseline: float top-1 {100 * report['baseline']['float_top1']:.1f}%")
    if report.get("teacher"):
        console.print(f"teacher (distilled from): float top-1 {100 * report['teacher']['test_top1']:.1f}%")
    stopped = (report.get("history") or {}).get("stopped_early")
    if stopped:
        console.print(f"training was stopped early ({stopped['stage']} epoch {stopped['epoch']} of {stopped['epochs']})")
    console.print(f"{report['int8_bytes'] / 1024:.0f} KiB model ({report['int8_bytes'] / report['float_tflite_bytes']:.2f}x "
                  f"float), {report['timing']['total_s']:.0f} s. Report: {out / 'report.md'}", soft_wrap=True)
    if report["skipped"]:
        console.print(f"{len(report['skipped'])} files skipped (listed in the report)")
    sample = next((p for p in sorted((out / "demo_data").rglob("*.png"))), None) if demo else None
    hint = f" {sample}" if sample else " IMAGE"
    console.print(f"Try it: edgecls classify {out / 'model.tflite'}{hint}", soft_wrap=True)
    tpu = report.get("edgetpu")
    if tpu:
        check = tpu["preflight"]
        first = check["first_cpu_op"]
        console.print(
            f"Edge TPU pre-flight: {check['status']}, {check['edgetpu_ops']} of {len(check['ops'])} ops on the Edge TPU"
            + (f"; first CPU op #{first['index']} {first['op']}: {first['reason']}" if first else ""),
            soft_wrap=True,
        )
        compiled = tpu.get("compiler")
        if compiled is None:
            console.print(f"edgetpu_compiler is not installed here; on an x86-64 Linux machine run, in {out}: "
                          f"[bold]{tpu['command']}[/]", soft_wrap=True)
        elif tpu.get("compiled_model"):
            console.print(f"compiled: {out / tpu['compiled_model']} ({compiled['edgetpu_ops']} ops on the Edge TPU, "
                          f"{compiled['cpu_ops']} on the CPU; on-chip memory {compiled['on_chip_memory']}, off-chip "
                          f"{compiled['off_chip_memory']})", soft_wrap=True)
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

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _with_ctrl_c_flag(work: Any, observer: RichObserver) -> Any:
    """Run ``work(should_stop)``: the first Ctrl-C asks the work to stop at its next safe point (see
    convert.training.stop_check); a second one interrupts at once."""
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
    from convert.training import StopRequest

    request = StopRequest()
    with _on_ctrl_c(request.request, "stopping training after this batch; the best weights so far will be exported "
                    "and verified (Ctrl-C again to abort)", observer):
        return work(request)


class TuneArch(str, Enum):
    compact_cnn = "compact-cnn"
    seed_cnn = "seed-cnn"
    mobilenet_v1 = "mobilenet_v1"
    mobilenet_v2 = "mobilenet_v2"
    mobilenet_v3_small = "mobilenet_v3_small"


class TuneObserver(RichObserver):
    """Tuning progress: one line as a trial starts and one as it ends, with the best feasible trial so far."""

    def epoch(self, stage: str, epoch: int, epochs: int, logs: dict[str, float]) -> None:
        pass

    def trial_done(self, record: Any, best: Any, done: int, total: int) -> None:
        if record.state == "complete":
            verdict = "[green]feasible[/]" if record.feasible else "[yellow]over budget[/]"
            line = (f"int8 val top-1 {100 * record.accuracy:.1f}%, {record.latency_ms:.2f} ms, "
                    f"{record.size_kb:.0f} KB, {verdict}")
        else:
            line = f"[yellow]{record.state}[/]"
        best_line = f"; best so far: trial {best.number} ({100 * best.accuracy:.1f}%)" if best else ""
        self.console.print(f"[bold]trial {record.number}[/] ({done}/{total} done): {line}{best_line}", soft_wrap=True)


def tune(
    data: Annotated[Path, typer.Argument(help="Dataset folder (DATA/<class>/*.jpg or train/ val/ [test/]).")],
    out: Annotated[Path, typer.Option("--out", help="Study, trials, table, plot and the chosen model.")] = Path("edgecls-tune"),
    arch: Annotated[TuneArch, typer.Option(help="Architecture to search.")] = TuneArch.compact_cnn,
    trials: Annotated[int, typer.Option(min=1, help="Trials in the study (finished ones count when resuming).")] = 20,
    budget_ms: Annotated[Optional[float], typer.Option(min=0.0, help="Largest p90 latency (edgecls bench, x profile factor).")] = None,
    max_size_kb: Annotated[Optional[float], typer.Option(min=0.0, help="Largest int8 model file.")] = None,
    timeout: Annotated[Optional[float], typer.Option(min=0.1, help="Stop starting trials after this many minutes.")] = None,
    profile: Annotated[Optional[str], typer.Option(help="Device profile whose latency_factor scales the latency.")] = None,
    max_epochs: Annotated[int, typer.Option(min=1, help="Most epochs a trial may train.")] = 30,
    input_sizes: Annotated[Optional[str], typer.Option(help="Comma-separated input sizes to search (default per arch).")] = None,
    bench_threads: Annotated[int, typer.Option(min=1, help="Interpreter threads for the latency measurement.")] = 1,
    color: Annotated[Color, typer.Option(help="Model colour input.")] = Color.rgb,
    weights: Annotated[str, typer.Option(help="MobileNet weights: imagenet, none, or a local .h5/.keras file.")] = "imagenet",
    resize: Annotated[Resize, typer.Option(help="How the device fits frames to the input.")] = Resize.squash,
    io: Annotated[IoType, typer.Option("--io", help="int8 model input/output type.")] = IoType.int8,
    calibration_samples: Annotated[int, typer.Option(min=1, help="Representative images for int8 calibration.")] = 300,
    max_drop: Annotated[float, typer.Option(min=0.0, help="Parity gate of the exported model, in points.")] = 1.0,
    min_agreement: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Parity gate: the least share of test images on which int8 and "
                            "float agree on the top-1 class.")
    ] = 0.9,
    split: Annotated[str, typer.Option(help="train,val,test percentages.")] = "70,15,15",
    seed: Annotated[int, typer.Option(help="Seed of the sampler, the split and each trial's training.")] = 0,
) -> None:
    """Search hyperparameters for the most accurate int8 model within a latency and size budget (Optuna).

    Resumable: run the same command again to continue a study in OUT/study.db. Ctrl-C keeps the finished trials.
    """
    import os

    from edgecls.cli import project_errors

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # as in convert
    observer = TuneObserver()
    with project_errors():
        _import_tensorflow("tune").get_logger().setLevel("ERROR")  # retracing notes between trials of other shapes
        from convert.pipeline import ConvertOptions
        from convert.training import TrainConfig
        from convert.tune import TuneOptions
        from convert.tune import tune as run_tune

        factor = 1.0
        if profile:
            from edgecls.profiles import load_profile

            prof = load_profile(profile)
            if prof.latency_factor is None:
                raise typer.BadParameter(f"profile {prof.name} has no latency_factor to scale latency with")
            factor = prof.latency_factor
        sizes = None
        if input_sizes:
            try:
                sizes = tuple(int(s) for s in input_sizes.split(",") if s.strip())
            except ValueError:
                raise typer.BadParameter(f"--input-sizes expects numbers like 64,96 (received {input_sizes!r})") from None
        base = ConvertOptions(out_dir=out, arch=arch.value, color=color.value, weights=weights, resize=resize.value,
                              io=io.value, calibration_samples=calibration_samples, max_drop=max_drop,
                              min_agreement=min_agreement,
                              split=_parse_split(split), train=TrainConfig(seed=seed))
        options = TuneOptions(base=base, trials=trials, budget_ms=budget_ms, max_size_kb=max_size_kb,
                              timeout_min=timeout, seed=seed, max_epochs=max_epochs, latency_factor=factor,
                              profile=profile, bench_threads=bench_threads, input_sizes=sizes)
        try:
            summary = _with_ctrl_c_flag(lambda stop: run_tune(data, options, observer, should_stop=stop), observer)
        except KeyboardInterrupt:
            observer.console.print(f"interrupted: the finished trials are kept in {out / 'study.db'}; run the same "
                                   "command again to resume", soft_wrap=True)
            raise typer.Exit(code=130) from None
    chosen = summary["chosen"]
    report = summary["report"]
    observer.console.print(
        f"\n[bold]chosen: trial {chosen['number']}[/]: int8 val top-1 {100 * chosen['accuracy']:.1f}%, "
        f"{chosen['latency_ms']:.2f} ms, {chosen['size_kb']:.0f} KB; on the test split: float "
        f"{100 * report['float']['top1']:.1f}%, int8 {100 * report['int8']['top1']:.1f}% "
        f"(agreement {100 * report['agreement']:.1f}%). Pareto front: trials {summary['pareto_front']}.",
        soft_wrap=True,
    )
    observer.console.print(f"Table: {out / 'tuning.md'}; plot: {out / 'pareto.png'}; model: {out / 'model.tflite'}",
                           soft_wrap=True)
    if not report["passed"]:
        typer.echo(f"error: {report['gate_message']}", err=True)
        raise typer.Exit(code=EXIT_VERDICT)
