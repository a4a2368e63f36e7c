"""`edgecls tune`: edge-aware hyperparameter search with Optuna.

Why Optuna and not KerasTuner: the search space is conditional (filter counts for compact-cnn, width and input size
for the MobileNets), the budgets are constraints on measured int8 latency and size, and the study must survive an
interrupted run. Optuna has define-by-run spaces, constrained TPE sampling, median pruning from per-epoch reports,
and a SQLite study store (``OUT/study.db``) that a second run resumes; KerasTuner has none of the constraints and
ties trials to its own Keras model-building loop.

Each trial trains a model, exports it to int8 exactly as `edgecls convert` does, and measures what the device would
get: int8 top-1 on the validation split (through `edgecls.Classifier`), latency with `edgecls.device.bench` on this machine
(times a device profile's ``latency_factor``), and file size. A trial over a budget is infeasible. The test split is
never looked at during the search; the chosen trial (the most accurate feasible one) is exported and verified on it,
with the same artifacts and parity report as `edgecls convert`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgecls.errors import ConfigError, ConversionError
from edgecls.fsutil import atomic_write_bytes, atomic_write_text

from . import evaluate
from .data import Dataset, scan
from .models import architecture, create_model, uses_sigmoid
from .options import TuneOptions
from .pipeline import ConvertOptions, QuietObserver, export, export_and_verify, manifest_for, write_model
from .tflite_export import to_tflite
from .training import deterministic, make_strategy, stop_check, train

STUDY_NAME = "edgecls-tune"
STUDY_FILE = "study.db"
BENCH_RUNS, BENCH_WARMUP = 60, 10


class TuneError(ConfigError):
    """The search cannot give a model within the budgets (or cannot start)."""


class TuneObserver(Protocol):
    def step(self, message: str) -> None: ...

    def trial_done(self, record: TrialRecord, best: TrialRecord | None, done: int, total: int) -> None: ...


class QuietTuneObserver(QuietObserver):
    def trial_done(self, record: TrialRecord, best: TrialRecord | None, done: int, total: int) -> None:
        pass


@dataclass(frozen=True)
class TrialRecord:
    number: int
    state: str  # complete, pruned, fail
    params: dict[str, Any]
    accuracy: float | None = None  # int8 top-1 on the validation split
    float_accuracy: float | None = None
    latency_ms: float | None = None  # p90, scaled by the profile's latency factor
    size_kb: float | None = None
    feasible: bool = False
    train_s: float | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the search space ----------------------------------------------------------------------------------------------


def suggest(trial: Any, options: TuneOptions) -> dict[str, Any]:
    """Sample one configuration (define-by-run: the space depends on the architecture)."""
    arch = architecture(options.base.arch)
    params: dict[str, Any] = {
        "learning_rate": trial.suggest_float("learning_rate", 3e-4, 1e-2, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [16, 32, 64]),
        "epochs": trial.suggest_int("epochs", max(1, options.max_epochs // 3), options.max_epochs),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "augment": trial.suggest_float("augment", 0.0, 1.5),
    }
    sizes = options.sizes()
    params["input_size"] = trial.suggest_categorical("input_size", list(sizes)) if len(sizes) > 1 else sizes[0]
    if arch.family == "compact":
        params["width"] = trial.suggest_categorical("width", [8, 16, 24, 32, 48])
        params["depth"] = trial.suggest_int("depth", 1, 4)
        params["separable"] = trial.suggest_categorical("separable", [True, False])
    elif arch.family == "mobilenet":
        alphas = [a for a in arch.alphas if a <= 1.0]
        params["alpha"] = trial.suggest_categorical("alpha", alphas) if len(alphas) > 1 else alphas[0]
        params["fine_tune_layers"] = trial.suggest_int("fine_tune_layers", 0, 60, step=10)
    return params


def trial_options(options: TuneOptions, params: dict[str, Any], out_dir: Path, seed: int) -> ConvertOptions:
    base = options.base
    epochs = int(params["epochs"])
    fine_tune = base.train.fine_tune_epochs and max(1, epochs // 2)
    transfer = architecture(base.arch).transfer
    return base.updated(
        out_dir=out_dir,
        input_size=int(params["input_size"]),
        dropout=float(params["dropout"]),
        width=int(params.get("width", base.width)),
        depth=int(params.get("depth", base.depth)),
        separable=bool(params.get("separable", base.separable)),
        alpha=params.get("alpha", base.alpha),
        baseline=False,
        epochs=epochs,
        batch_size=int(params["batch_size"]),
        learning_rate=float(params["learning_rate"]),
        augment=float(params["augment"]),
        patience=max(3, epochs // 3),
        seed=seed,
        fine_tune_epochs=fine_tune if transfer else base.train.fine_tune_epochs,
        fine_tune_layers=int(params.get("fine_tune_layers", base.train.fine_tune_layers)),
    )


# -- running a study -----------------------------------------------------------------------------------------------


class _Data:
    """Datasets decoded once per input size, all with the same seeded split (so trials compare fairly)."""

    def __init__(self, root: Path, options: TuneOptions, observer: Any) -> None:
        self.root, self.options, self.observer = root, options, observer
        self._cache: dict[int, Dataset] = {}

    def get(self, size: int) -> Dataset:
        if size not in self._cache:
            from edgecls.model.preprocess import PreprocessConfig

            base = self.options.base
            self.observer.step(f"decoding {self.root} at {size}x{size}")
            self._cache[size] = scan(
                self.root,
                input_size=(size, size),
                channels=base.channels,
                seed=self.options.seed,
                split=base.split,
                preprocess=PreprocessConfig(resize=base.resize, mean=0.0, std=1.0),
                progress=self.observer.decoding,
                cache=base.image_cache(),
                warn=lambda message: self.observer.step(f"warning: {message}"),
            )
        return self._cache[size]


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError("edgecls tune needs Optuna: pip install 'edgecls[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def open_study(options: TuneOptions, data_dir: Path) -> Any:
    """Create the study in OUT/study.db, or load it to resume; a study made with other settings is an error."""
    optuna = _import_optuna()
    options.out_dir.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{options.out_dir / STUDY_FILE}")
    sampler = optuna.samplers.TPESampler(seed=options.seed, n_startup_trials=5)  # reads Trial.set_constraint
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=3)
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction="maximize",
        load_if_exists=True,
    )
    settings = {
        "arch": options.base.arch,
        "data": str(Path(data_dir).resolve()),
        "seed": options.seed,
        "budget_ms": options.budget_ms,
        "max_size_kb": options.max_size_kb,
        "latency_factor": options.latency_factor,
        "color": options.base.color,
    }
    saved = study.user_attrs.get("settings")
    if saved is None:
        study.set_user_attr("settings", settings)
    else:
        changed = sorted(k for k in settings if saved.get(k) != settings[k])
        if changed:
            raise ConfigError(
                f"{options.out_dir / STUDY_FILE} holds a study with other settings ({', '.join(changed)}: "
                f"{', '.join(f'{saved.get(k)!r}' for k in changed)}); resume it with the same settings, or use another --out"
            )
    # A trial left RUNNING by a killed process will never finish: mark it failed so the count is right.
    # (FrozenTrial exposes its storage id only as _trial_id.)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL)
    return study


def tune(
    data_dir: Path, options: TuneOptions, observer: Any | None = None, should_stop: Callable[[], bool] | None = None
) -> dict[str, Any]:
    """Run (or resume) the search, write the table and Pareto plot, and export the chosen trial.

    Returns the tuning summary (also written to OUT/tuning.json). KeyboardInterrupt keeps every finished trial in
    the study and writes the summary of those before it propagates. ``should_stop`` (asked after every training
    batch and between trials) is how a caller's Ctrl-C handler stops the search reliably: see
    edgecls.convert.training.stop_check.
    """
    optuna = _import_optuna()
    obs = observer or QuietTuneObserver()
    started = time.perf_counter()
    study = open_study(options, data_dir)
    data = _Data(Path(data_dir), options, obs)
    floor = _check_budgets_possible(options, data, obs)
    finished = [
        t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]
    remaining = options.trials - len(finished)
    if finished:
        obs.step(f"resuming: {len(finished)} of {options.trials} trials already done in {options.out_dir / STUDY_FILE}")

    def objective(trial: Any) -> float:
        stop_check(should_stop)
        return _run_trial(trial, options, data, obs, optuna, should_stop)

    def report(study: Any, frozen: Any) -> None:
        records = trial_records(study)
        done = sum(r.state in ("complete", "pruned") for r in records)
        obs.trial_done(_record(frozen), choose(records), done, options.trials)
        stop_check(should_stop)

    interrupted = False
    if remaining > 0:
        optuna_log, quiet = logging.getLogger("optuna.study._optimize"), _InterruptedTrialLog()
        optuna_log.addFilter(quiet)
        try:
            study.optimize(
                objective,
                n_trials=remaining,
                timeout=options.timeout_min * 60 if options.timeout_min else None,
                callbacks=[report],
                gc_after_trial=True,
                catch=(ConversionError,),
            )
        except KeyboardInterrupt:
            interrupted = True
        finally:
            optuna_log.removeFilter(quiet)
    records = trial_records(study)
    summary = _write_summary(options, records, floor, interrupted)
    if interrupted:
        raise KeyboardInterrupt
    best = choose(records)
    if best is None:
        raise TuneError(_no_feasible_message(options, records))
    obs.step(f"exporting trial {best.number} as edgecls convert would, with its parity report")
    summary["chosen"] = best.to_dict()
    summary["report"] = _export_chosen(best, options, data, obs)
    summary["timing_s"] = round(time.perf_counter() - started, 1)
    atomic_write_text(options.out_dir / "tuning.json", json.dumps(summary, indent=2, default=_json_default))
    return summary


def _run_trial(
    trial: Any, options: TuneOptions, data: _Data, obs: Any, optuna: Any, should_stop: Callable[[], bool] | None = None
) -> float:
    params = suggest(trial, options)
    obs.step(f"trial {trial.number}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(params.items())))
    trial_dir = options.out_dir / "trials" / f"{trial.number:04d}"
    opts = trial_options(options, params, trial_dir, options.seed + trial.number)
    import keras

    keras.utils.set_random_seed(opts.train.seed)
    deterministic()
    dataset = data.get(opts.size())
    sigmoid = uses_sigmoid(opts.arch, len(dataset.classes))
    model = create_model(opts.arch, opts.model_spec(len(dataset.classes)))
    pruning = _PruningObserver(trial, optuna)
    t0 = time.perf_counter()
    history = train(
        model,
        dataset,
        opts.train,
        sigmoid=sigmoid,
        checkpoint_dir=trial_dir / "checkpoints",
        strategy=make_strategy("default"),
        observer=pruning,
        should_stop=should_stop,
    )
    train_s = time.perf_counter() - t0
    trial_dir.mkdir(parents=True, exist_ok=True)
    model.save(trial_dir / "model.keras")
    atomic_write_text(trial_dir / "history.json", json.dumps(history))

    flat, _ = export(model, dataset, opts, QuietObserver(), sigmoid=sigmoid)  # as edgecls convert exports
    model_path = trial_dir / "model.tflite"
    write_model(model_path, flat, manifest_for(opts, dataset, sigmoid, None), list(dataset.classes))
    labels = dataset.labels("val")
    int8_probs = evaluate.tflite_probabilities(model_path, [s.path for s in dataset.samples["val"]])
    float_probs = evaluate.float_probabilities(model, dataset.images["val"], sigmoid=sigmoid)
    accuracy = evaluate.topk_accuracy(labels, int8_probs, 1)
    latency = measure_latency(model_path, options)
    size_kb = len(flat) / 1024
    constraints = [
        latency - options.budget_ms if options.budget_ms is not None else 0.0,
        size_kb - options.max_size_kb if options.max_size_kb is not None else 0.0,
    ]
    trial.set_user_attr("params", params)
    trial.set_user_attr("float_accuracy", evaluate.topk_accuracy(labels, float_probs, 1))
    trial.set_user_attr("latency_ms", latency)
    trial.set_user_attr("size_kb", size_kb)
    trial.set_user_attr("train_s", train_s)
    trial.set_constraint("latency_over_budget_ms", constraints[0])  # <= 0: feasible (TPE samples around those)
    trial.set_constraint("size_over_budget_kb", constraints[1])
    trial.set_user_attr("feasible", all(c <= 0 for c in constraints))
    return accuracy


class _InterruptedTrialLog(logging.Filter):
    """Optuna logs a failed trial as two warnings, the first with a traceback. A trial stopped by Ctrl-C is not a
    failure (the command says it was interrupted and what was kept): drop both."""

    def __init__(self) -> None:
        super().__init__()
        self.dropped_error = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            self.dropped_error = True
            return False
        if self.dropped_error and "failed with value" in record.getMessage():
            self.dropped_error = False
            return False
        return True


class _PruningObserver:
    """Reports validation accuracy per epoch to Optuna and stops a trial the median pruner gives up on."""

    def __init__(self, trial: Any, optuna: Any) -> None:
        self.trial, self.optuna, self.step = trial, optuna, 0

    def stage(self, name: str, epochs: int) -> None:
        pass

    def epoch(self, stage: str, epoch: int, epochs: int, logs: dict[str, float]) -> None:
        accuracy = logs.get("val_accuracy")
        if accuracy is None or math.isnan(accuracy):
            return
        self.trial.report(float(accuracy), self.step)
        self.step += 1
        if self.trial.should_prune():
            raise self.optuna.TrialPruned(f"validation accuracy {accuracy:.3f} at epoch {self.step}")


def measure_latency(model_path: Path, options: TuneOptions) -> float:
    """p90 latency of the int8 model with edgecls's own bench, times the profile's latency factor."""
    from edgecls.device.bench import benchmark
    from edgecls.model.classifier import Classifier
    from edgecls.nativelog import quiet_native_stderr

    with quiet_native_stderr():
        clf = Classifier(model_path, num_threads=options.bench_threads)
    with clf:
        result = benchmark(clf, runs=BENCH_RUNS, warmup=BENCH_WARMUP)
    return result.total.p90 * options.latency_factor


def _check_budgets_possible(options: TuneOptions, data: _Data, obs: Any) -> dict[str, float] | None:
    """Convert the smallest model the search space can make (untrained) and measure it: a budget below that is
    impossible, and saying so now beats training every trial into infeasibility."""
    if options.budget_ms is None and options.max_size_kb is None:
        return None
    import tempfile

    arch = options.base.arch
    smallest = {
        "learning_rate": 1e-3,
        "batch_size": 32,
        "epochs": 1,
        "dropout": 0.0,
        "augment": 0.0,
        "input_size": min(options.sizes()),
        "width": 8,
        "depth": 1,
        "separable": True,
        "alpha": min(a for a in architecture(arch).alphas or (0.25,) if a <= 1.0),
        "fine_tune_layers": 0,
    }
    classes = 2
    opts = trial_options(options, smallest, options.out_dir, options.seed)
    obs.step("measuring the smallest model in the search space against the budgets")
    spec = opts.model_spec(classes, dropout=0.0, width=8, depth=1, separable=True, weights="none")
    model = create_model(arch, spec)
    rng = np.random.default_rng(0)
    calib = rng.uniform(0, 255, (8, opts.size(), opts.size(), opts.channels)).astype(np.float32)
    flat = to_tflite(model, mode="int8", io_type=opts.io, representative=calib)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "floor.tflite"
        path.write_bytes(flat)
        latency = measure_latency(path, options)
    size_kb = len(flat) / 1024
    factor = f" (x{options.latency_factor:g} for profile {options.profile})" if options.profile else ""
    if options.budget_ms is not None and latency > options.budget_ms:
        raise TuneError(
            f"--budget-ms {options.budget_ms:g} is impossible for {arch}: the smallest model in the search space "
            f"(input {opts.size()}, untrained) already takes {latency:.3f} ms at p90 here{factor}; raise the budget, "
            "or search a smaller architecture (--arch compact-cnn)"
        )
    if options.max_size_kb is not None and size_kb > options.max_size_kb:
        raise TuneError(
            f"--max-size-kb {options.max_size_kb:g} is impossible for {arch}: the smallest model in the search space "
            f"is already {size_kb:.1f} KB as int8; raise the limit or search a smaller architecture"
        )
    return {"latency_ms": latency, "size_kb": size_kb}


# -- results -------------------------------------------------------------------------------------------------------


def _record(t: Any) -> TrialRecord:
    state = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "fail", "RUNNING": "running"}.get(
        t.state.name, "other"
    )
    attrs = t.user_attrs
    return TrialRecord(
        number=t.number,
        state=state,
        params=dict(attrs.get("params") or t.params),
        accuracy=float(t.value) if state == "complete" and t.value is not None else None,
        float_accuracy=attrs.get("float_accuracy"),
        latency_ms=attrs.get("latency_ms"),
        size_kb=attrs.get("size_kb"),
        feasible=bool(attrs.get("feasible", False)) and state == "complete",
        train_s=attrs.get("train_s"),
        reason=None if state == "complete" else (attrs.get("reason") or state),
    )


def trial_records(study: Any) -> list[TrialRecord]:
    return [_record(t) for t in study.trials]


def pareto_front(records: list[TrialRecord]) -> list[TrialRecord]:
    """Completed trials no other completed trial beats on accuracy, latency and size at once."""
    done = [r for r in records if r.state == "complete" and r.accuracy is not None]

    def dominates(a: TrialRecord, b: TrialRecord) -> bool:
        ge = a.accuracy >= b.accuracy and a.latency_ms <= b.latency_ms and a.size_kb <= b.size_kb
        gt = a.accuracy > b.accuracy or a.latency_ms < b.latency_ms or a.size_kb < b.size_kb
        return ge and gt

    return sorted((r for r in done if not any(dominates(o, r) for o in done)), key=lambda r: -(r.accuracy or 0))


def choose(records: list[TrialRecord]) -> TrialRecord | None:
    """The most accurate feasible trial (ties: the faster one, then the smaller)."""
    feasible = [r for r in records if r.feasible and r.accuracy is not None]
    if not feasible:
        return None
    return min(feasible, key=lambda r: (-r.accuracy, r.latency_ms, r.size_kb))


def _no_feasible_message(options: TuneOptions, records: list[TrialRecord]) -> str:
    done = [r for r in records if r.state == "complete"]
    if not done:
        return f"no trial finished ({len(records)} pruned or failed); try more --trials or a longer --timeout"
    parts = []
    if options.budget_ms is not None:
        parts.append(f"the fastest took {min(r.latency_ms for r in done):.3f} ms (--budget-ms {options.budget_ms:g})")
    if options.max_size_kb is not None:
        parts.append(f"the smallest was {min(r.size_kb for r in done):.1f} KB (--max-size-kb {options.max_size_kb:g})")
    return (
        f"none of the {len(done)} finished trials met the budgets: {'; '.join(parts)}; the table is in "
        f"{options.out_dir / 'tuning.md'}"
    )


def _write_summary(
    options: TuneOptions, records: list[TrialRecord], floor: dict[str, float] | None, interrupted: bool
) -> dict[str, Any]:
    front = pareto_front(records)
    best = choose(records)
    summary = {
        "arch": options.base.arch,
        "trials": [r.to_dict() for r in records],
        "pareto_front": [r.number for r in front],
        "chosen": best.to_dict() if best else None,
        "budgets": {
            "budget_ms": options.budget_ms,
            "max_size_kb": options.max_size_kb,
            "latency_factor": options.latency_factor,
            "profile": options.profile,
            "bench_threads": options.bench_threads,
            "latency": "p90 of edgecls bench, ms",
        },
        "smallest_model": floor,
        "interrupted": interrupted,
        "study": str(options.out_dir / STUDY_FILE),
    }
    atomic_write_text(options.out_dir / "tuning.json", json.dumps(summary, indent=2, default=_json_default))
    atomic_write_text(options.out_dir / "tuning.md", markdown(summary, records, front, best))
    plot_pareto(options.out_dir / "pareto.png", records, front, best, options)
    return summary


def markdown(
    summary: dict[str, Any], records: list[TrialRecord], front: list[TrialRecord], best: TrialRecord | None
) -> str:
    budgets = summary["budgets"]
    lines = [
        f"# edgecls tune: {summary['arch']}",
        "",
        (
            f"Budgets: latency {budgets['budget_ms'] or 'none'} ms (p90 here x {budgets['latency_factor']:g}), "
            f"size {budgets['max_size_kb'] or 'none'} KB. Accuracy is int8 top-1 on the validation split."
        ),
        "",
        "| trial | state | int8 val top-1 | float val top-1 | latency ms | size KB | feasible | Pareto | params |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    on_front = {r.number for r in front}
    for r in records:
        acc = f"{100 * r.accuracy:.1f}%" if r.accuracy is not None else "-"
        facc = f"{100 * r.float_accuracy:.1f}%" if r.float_accuracy is not None else "-"
        lat = f"{r.latency_ms:.3f}" if r.latency_ms is not None else "-"
        size = f"{r.size_kb:.1f}" if r.size_kb is not None else "-"
        mark = "**chosen**" if best and r.number == best.number else ("yes" if r.number in on_front else "")
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(r.params.items()))
        lines.append(
            f"| {r.number} | {r.state} | {acc} | {facc} | {lat} | {size} | {'yes' if r.feasible else 'no'} "
            f"| {mark} | {params} |"
        )
    if summary.get("interrupted"):
        lines += ["", "Interrupted: run the same command again to resume from the finished trials."]
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def plot_pareto(
    path: Path, records: list[TrialRecord], front: list[TrialRecord], best: TrialRecord | None, options: TuneOptions
) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in records if r.state == "complete" and r.accuracy is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    if done:
        sizes = np.array([r.size_kb for r in done])
        scale = 30 + 270 * (sizes - sizes.min()) / max(1e-9, sizes.max() - sizes.min())
        colors = ["tab:blue" if r.feasible else "tab:gray" for r in done]
        ax.scatter(
            [r.latency_ms for r in done],
            [100 * r.accuracy for r in done],
            s=scale,
            c=colors,
            alpha=0.6,
            edgecolors="none",
            label="trials (area: size)",
        )
        pf = sorted(front, key=lambda r: r.latency_ms)
        ax.plot(
            [r.latency_ms for r in pf],
            [100 * r.accuracy for r in pf],
            "-o",
            color="tab:orange",
            ms=4,
            label="Pareto front",
        )
        for r in done:
            ax.annotate(
                str(r.number), (r.latency_ms, 100 * r.accuracy), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
        if best:
            ax.scatter([best.latency_ms], [100 * best.accuracy], marker="*", s=250, color="tab:red", label="chosen")
    if options.budget_ms is not None:
        ax.axvline(options.budget_ms, color="tab:red", linestyle="--", linewidth=1, label="latency budget")
    ax.set_xlabel(
        "p90 latency, ms" + (f" (x{options.latency_factor:g} for {options.profile})" if options.profile else "")
    )
    ax.set_ylabel("int8 top-1 on validation, %")
    ax.set_title(f"edgecls tune: {options.base.arch}, {len(done)} finished trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _export_chosen(best: TrialRecord, options: TuneOptions, data: _Data, obs: Any) -> dict[str, Any]:
    import keras

    trial_dir = options.out_dir / "trials" / f"{best.number:04d}"
    opts = trial_options(options, best.params, options.out_dir, options.seed + best.number)
    model = keras.models.load_model(trial_dir / "model.keras", compile=False)
    dataset = data.get(opts.size())
    sigmoid = uses_sigmoid(opts.arch, len(dataset.classes))
    history = json.loads((trial_dir / "history.json").read_text())
    return export_and_verify(
        model,
        dataset,
        opts,
        obs,
        sigmoid=sigmoid,
        history=history,
        baseline=None,
        timing={"train_s": best.train_s or 0.0, "started": time.perf_counter()},
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


__all__ = ["TrialRecord", "TuneError", "TuneOptions", "choose", "open_study", "pareto_front", "suggest", "tune"]
