"""The verdict of a run: the parity gate (the exported model against the float one), what the user should know
(a model that learned nothing, a test split too small to measure the allowed drop, advice to do better) and the
report that records it. The stages (edgecls.convert.pipeline) measure; this module judges.

`build_report` assembles report.json's dict; `gate_failures` is the gate itself: an empty list passes.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

from . import report as reporting
from .data import Dataset
from .models import ARCHITECTURES, architecture
from .options import ConvertOptions
from .staging import final_path

FEW_PER_CLASS = 300  # below this many training images per class, a model from scratch is told about transfer
TRANSFER = "--arch mobilenet_v1 --alpha 0.25 --weights imagenet"
_TEST_NOTES = {
    "val": "the data has no test/ folder, so the held-out evaluation uses val/ (also used for early stopping)",
    "calibration": "the model was trained elsewhere; every calibration image is also an evaluation image",
}


def gate_failures(metrics: dict[str, Any], options: ConvertOptions) -> list[str]:
    """What fails the parity gate, one sentence each (empty: it passes): a top-1 drop over --max-drop, or a top-1
    agreement under --min-agreement. (A float model no better than the majority class is not a parity failure; the
    report says so in its first line instead of PASSED: see `learned_nothing`.)"""
    key = result_key(options)
    failures = []
    if metrics["drop_points"] > options.max_drop:
        failures.append(
            f"{key} top-1 is {metrics['drop_points']:.2f} points below float, more than --max-drop "
            f"{options.max_drop:.2f}"
        )
    if metrics["agreement"] < options.min_agreement:
        failures.append(
            f"{key} and float agree on the top-1 class of {100 * metrics['agreement']:.1f}% of the test "
            f"images, under --min-agreement {100 * options.min_agreement:.0f}%"
        )
    return failures


def result_key(options: ConvertOptions) -> str:
    """The report's key for the exported model's numbers: "int8", or "tflite" for float16/dynamic/float exports."""
    return "int8" if options.quant == "int8" else "tflite"


def gate_message(failures: list[str], options: ConvertOptions) -> str:
    """What a failed gate says: each failure, and what to try next with the int8 method that ran."""
    fix = (
        "Try more --qat-epochs, or --calibration-samples higher."
        if options.qat
        else "Try more --int8-tune-epochs."
        if options.int8_tune
        else "Try --int8-method int8-tune (the int8 weights fitted to the float model, a few minutes), or "
        "quantisation-aware training: --int8-method qat (pip install 'edgecls[qat]')."
    )
    return "; ".join(failures) + f"; the artifacts are written but the model did not pass. {fix}"


def majority_class(counts: dict[str, int]) -> dict[str, Any]:
    """The class a model that always gives one answer would do best with, and the top-1 it would get."""
    if not counts:
        return {"class": None, "top1": 0.0}
    name = max(counts, key=counts.__getitem__)
    return {"class": name, "top1": counts[name] / sum(counts.values())}


def learned_nothing(metrics: dict[str, Any], dataset: Dataset) -> bool:
    """Whether the float model is no better than always answering the most frequent test class: a gate that passes
    on such a model proves only that int8 guesses the same way."""
    return metrics["float"]["top1"] <= majority_class(dataset.counts("test"))["top1"]


def guessing_warning(top1: float, majority: dict[str, Any], *, trained: bool) -> str:
    """What to say when the float model is no better than always answering the most frequent class: a parity gate
    that passes on such a model proves only that int8 guesses the same way."""
    advice = (
        "training did not learn the task: lower --learning-rate (a diverged run collapses onto one class), "
        "train longer, or check the labels"
        if trained
        else "check that the model and the labels belong together"
    )
    return (
        f"the float model's top-1 ({100 * top1:.1f}%) is no better than always answering "
        f"{majority['class']!r} ({100 * majority['top1']:.1f}% of the test images); {advice}"
    )


def resolution_warning(options: ConvertOptions, dataset: Dataset) -> str | None:
    """What to say when one test image is worth more top-1 points than --max-drop allows: the gate cannot measure
    a drop that small (None when it can)."""
    n_test = len(dataset.samples["test"])
    per_image = points_per_image(dataset)
    if per_image <= options.max_drop:
        return None
    return (
        f"the {dataset.test_source} split has {n_test} images, so one image is {per_image:.2f} points "
        f"of top-1, more than the --max-drop of {options.max_drop:.2f} the gate allows: it cannot "
        f"measure a drop that small (give it at least {int(100 / max(options.max_drop, 1e-9)) + 1} "
        "test images, e.g. a larger --split test share)"
    )


def points_per_image(dataset: Dataset) -> float:
    """How many points of top-1 one held-out image is worth."""
    return 100.0 / max(1, len(dataset.samples["test"]))


def advice(
    options: ConvertOptions,
    dataset: Dataset,
    metrics: dict[str, Any],
    baseline: dict[str, Any] | None,
    per_image: float,
) -> list[str]:
    """What a user should know to do better: the textbook baseline beat the model (by more than one test image),
    or a model from scratch had few images per class (transfer learning is what such data needs)."""
    out: list[str] = []
    if options.recipe == "demo":  # synthetic shapes: nothing to advise
        return out
    data = shlex.quote(str(final_path(dataset.root.absolute())))  # both absolute: one command, copied as it is
    run = shlex.quote(str(final_path(options.out_dir.absolute())))
    scratch = options.arch in ("compact-cnn", "seed-cnn") or options.weights == "none"
    if baseline is not None and 100 * (baseline["float_top1"] - metrics["int8"]["top1"]) > per_image:
        out.append(
            f"the baseline (the tutorial CNN, --arch seed-cnn, trained on the same split) scored "
            f"{100 * baseline['float_top1']:.1f}% on the test split, more than this {options.arch}'s "
            f"{100 * metrics['int8']['top1']:.1f}% int8: transfer learning usually beats both "
            f"(edgecls convert {data} --out {run}-transfer {TRANSFER}), or take the baseline itself "
            f"(--arch seed-cnn)"
        )
    fewest = min(dataset.counts("train").values(), default=0)
    if scratch and fewest < FEW_PER_CLASS:
        out.append(
            f"{options.arch} learns from scratch here, and the smallest class has {fewest} training images: "
            f"with under {FEW_PER_CLASS} per class, a model from ImageNet weights often does better; compare "
            f"(edgecls convert {data} --out {run}-transfer {TRANSFER})"
        )
    return out


def warnings_for(
    options: ConvertOptions,
    dataset: Dataset,
    metrics: dict[str, Any],
    baseline: dict[str, Any] | None,
    *,
    trained: bool,
) -> list[str]:
    """The report's warnings, in order: a model that learned nothing, a gate that cannot measure the allowed drop,
    and (for a model trained here) the advice."""
    warnings = []
    if learned_nothing(metrics, dataset):
        majority = majority_class(dataset.counts("test"))
        warnings.append(guessing_warning(metrics["float"]["top1"], majority, trained=trained))
    resolution = resolution_warning(options, dataset)
    if resolution is not None:
        warnings.append(resolution)
    if trained:
        warnings += advice(options, dataset, metrics, baseline, points_per_image(dataset))
    return warnings


def verdict(options: ConvertOptions, dataset: Dataset, metrics: dict[str, Any]) -> dict[str, Any]:
    """The report's verdict keys: the gate's limits, whether the model learned anything, what one test image is
    worth, and whether the gate passed and why not."""
    failures = gate_failures(metrics, options)
    passed = not failures
    return {
        "max_drop": options.max_drop,
        "min_agreement": options.min_agreement,
        "learned_nothing": learned_nothing(metrics, dataset),
        "test_images": len(dataset.samples["test"]),
        "points_per_image": round(points_per_image(dataset), 3),
        "passed": passed,
        "gate_message": None if passed else gate_message(failures, options),
    }


def build_report(
    options: ConvertOptions,
    dataset: Dataset,
    model: Any,
    metrics: dict[str, Any],
    *,
    sizes: tuple[int, int],
    baseline: dict[str, Any] | None,
    history: dict[str, Any] | None,
    timing: dict[str, float],
    external: str | None,
) -> dict[str, Any]:
    """report.json for a verified run: what was trained on what, the numbers, the verdict (`verdict`) and the
    settings that applied. ``sizes``: the bytes of model.tflite and of the float network; ``history`` is None for a
    model trained elsewhere (``external``, its path)."""
    tflite_bytes, float_bytes = sizes
    return {
        "schema_version": reporting.REPORT_SCHEMA_VERSION,
        "classes": list(dataset.classes),
        "model": {
            "arch": options.arch,
            "input_size": options.size(),
            "color": options.color,
            "params": int(model.count_params()),
            "source_model": external,
        },
        "float": metrics["float"],
        result_key(options): metrics["int8"],
        "agreement": metrics["agreement"],
        "drop_points": metrics["drop_points"],
        **verdict(options, dataset, metrics),
        "int8_bytes": tflite_bytes,
        "float_tflite_bytes": float_bytes,
        "quantization": {
            "mode": options.quant,
            "io": options.io,
            "method": options.method,
            "bias_correction": options.corrects_biases,
            "int8_tune": options.int8_tune,
        },
        **_data_section(options, dataset),
        "majority_class": majority_class(dataset.counts("test")),
        "warnings": warnings_for(options, dataset, metrics, baseline, trained=history is not None),
        "imbalance": round(dataset.imbalance(), 3),
        "skipped": [{"path": s.path, "reason": s.reason} for s in dataset.skipped],
        "baseline": baseline,
        "history": history,
        "settings": settings(options),
        "dataset_fingerprint": dataset.fingerprint,
        "image_cache": dict(dataset.cache),
        "timing": {
            "train_s": round(timing["train_s"], 1),
            "total_s": round(time.perf_counter() - timing["started"], 1),
        },
    }


def _data_section(options: ConvertOptions, dataset: Dataset) -> dict[str, Any]:
    """What the run was measured on: the split, --extra-data, where the held-out images came from."""
    return {
        "split_sizes": dataset.split_sizes(),
        "extra_data": {"folders": [str(p) for p in options.extra_data], "train_images": dataset.extra}
        if options.extra_data
        else None,
        "test_source": dataset.test_source,
        "test_note": _TEST_NOTES.get(dataset.test_source),
        "class_counts": {"train": dataset.counts("train"), "test": dataset.counts("test")},
    }


def settings(options: ConvertOptions) -> dict[str, Any]:
    """The options that meant something for this run (see `applies`), by flat name, as JSON values."""
    return {
        k: (str(v) if isinstance(v, Path) else [str(p) for p in v] if k == "extra_data" else v)
        for k, v in options.flat().items()
        if applies(k, options)
    }


_FAMILY_OPTIONS = {
    "mobilenet": ("alpha", "weights", "train.fine_tune_epochs", "train.fine_tune_layers"),
    "compact": ("width", "depth", "separable"),
}
_ONLY_WITH = {
    "teacher_weight": "teacher",
    "qat_epochs": "qat",
    "int8_tune_epochs": "int8-tune",
    "labels": "external",
    "mean": "external",
    "std": "external",
}


def applies(name: str, options: ConvertOptions) -> bool:
    """Whether the setting ``name`` (report.json's flat name) meant anything for this run: a compact-cnn has no
    alpha, ImageNet weights or fine-tuning stage; the teacher's weight needs a teacher; and so on."""
    family = architecture(options.arch).family if options.arch in ARCHITECTURES else None
    for owner, names in _FAMILY_OPTIONS.items():
        if name in names and family != owner:
            return False
    needs = _ONLY_WITH.get(name)
    if needs == "teacher":
        return options.teacher is not None
    if needs in ("qat", "int8-tune"):
        return options.method == needs
    if needs == "external":
        return options.labels is not None or options.mean is not None
    return True


def point_to_ptq(report: dict[str, Any], ptq: dict[str, Any], metrics: dict[str, Any]) -> None:
    """A failed QAT run whose post-training int8 lost less: its gate message says to run without QAT."""
    if not report["passed"] and ptq["drop_points"] < metrics["drop_points"]:
        report["gate_message"] += (
            f" Post-training int8 lost only {ptq['drop_points']:.2f} points on this model: "
            "run without --int8-method qat."
        )
