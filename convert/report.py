"""The convert report: report.json (for machines), report.md (for people), and two plots."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgecls.fsutil import atomic_write_bytes, atomic_write_text

# report.json's "schema_version": raised when a key changes meaning or goes away (new keys do not raise it).
REPORT_SCHEMA_VERSION = 1


def write_json(path: Path, report: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(report, indent=2, sort_keys=False) + "\n")


def _figure_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plot_confusion(path: Path, matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = np.asarray(matrix, dtype=float)
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    k = len(classes)
    size = max(4.0, 0.6 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), labels=classes, rotation=45, ha="right")
    ax.set_yticks(range(k), labels=classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    f"{int(m[i, j])}",
                    ha="center",
                    va="center",
                    color="white" if norm[i, j] > 0.5 else "black",
                    fontsize=9,
                )
    atomic_write_bytes(path, _figure_bytes(fig))
    plt.close(fig)


def plot_curves(path: Path, history: dict[str, Any], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = range(1, len(history.get("loss", [])) + 1)
    for ax, key, label in ((loss_ax, "loss", "loss"), (acc_ax, "accuracy", "accuracy")):
        ax.plot(epochs, history.get(key, []), label=f"train {label}")
        ax.plot(epochs, history.get(f"val_{key}", []), label=f"val {label}")
        for stage in history.get("stages", [])[1:]:
            ax.axvline(stage["start_epoch"] + 0.5, color="grey", linestyle="--", linewidth=1)
            ax.text(stage["start_epoch"] + 0.7, ax.get_ylim()[1], stage["name"], va="top", fontsize=8, color="grey")
        kept = kept_epoch(history)
        if kept is not None and kept <= len(history.get(f"val_{key}", [])):
            ax.plot([kept], [history[f"val_{key}"][kept - 1]], "o", color="black", label=f"kept (epoch {kept})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    atomic_write_bytes(path, _figure_bytes(fig))
    plt.close(fig)


def kept_epoch(history: dict[str, Any] | None) -> int | None:
    """The epoch (1-based) whose weights the model was exported with: the last stage's, when training recorded it."""
    stages = (history or {}).get("stages") or [{}]
    return stages[-1].get("kept_epoch")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _imx500_lines(section: dict[str, Any] | None) -> list[str]:
    from .imx500 import markdown_lines

    return markdown_lines(section)


def _teacher_lines(teacher: dict[str, Any] | None) -> list[str]:
    if not teacher:
        return []
    lines = [
        "",
        "## Distillation",
        "",
        (
            f"- trained towards {teacher['weight']:g} x the probabilities of `{teacher['path']}` "
            f"({teacher.get('arch') or 'architecture unknown'}) + {1 - teacher['weight']:g} x the labels; its "
            "top-1 in the accuracy table is on the held-out split seen at this model's input size"
        ),
    ]
    if teacher["split_checked"]:
        lines.append(
            "- the teacher was trained on this dataset with the same split: it has not seen the held-out images"
        )
    else:
        lines.append(f"- **{teacher['note']}**")
    return lines


AGREEMENT_HINT = 0.98  # below this top-1 agreement, report.md suggests --int8-method int8-tune


def _int8_method(report: dict[str, Any]) -> list[str]:
    q, tuning = report["quantization"], report.get("int8_tuning")
    if q["mode"] != "int8" or report.get("qat"):
        return []
    if tuning:
        return [
            (
                f"- int8 weights: error-compensating rounding on {tuning['rounded_layers']} conv layers, then "
                f"fine-tuned with it for {tuning['epochs']} epochs on {tuning['images']} training images (KL to the "
                f"float model {tuning['kl_first_epoch']:.4f} -> {tuning['kl_last_epoch']:.4f}, {tuning['seconds']:.0f} s)"
            )
        ]
    lines = [
        "- int8 weights: rounded to nearest"
        + (", conv biases corrected for the rounding error" if q.get("bias_correction") else "")
    ]
    if report["agreement"] < AGREEMENT_HINT:
        lines.append(
            f"- agreement is below {AGREEMENT_HINT:.0%}: `--int8-method int8-tune` fits the int8 weights to "
            "the float model (a flowers128 MobileNet went from 96.4% to 98.3%)"
        )
    return lines


def _kept_lines(history: dict[str, Any] | None) -> list[str]:
    kept = kept_epoch(history)
    if history is None or kept is None or history.get("stopped_early"):  # the stop note already names the epoch
        return []
    stage, loss, accuracy = history["stages"][-1]["name"], history["val_loss"], history["val_accuracy"]
    return [
        (
            f"The model is the weights of epoch {kept} of {len(loss)} ({stage} stage, lowest validation loss "
            f"{loss[kept - 1]:.4f}, validation accuracy {_pct(accuracy[kept - 1])})."
        ),
        "",
    ]


def _per_epoch(history: dict[str, Any] | None) -> str:
    seconds = (history or {}).get("epoch_s") or []
    if not seconds:
        return ""
    cluster = (history or {}).get("cluster")
    where = f" on {cluster['workers']} workers" if cluster else ""
    return f", {len(seconds)} epochs, {sum(seconds) / len(seconds):.1f} s per epoch{where}"


def _graph(report: dict[str, Any]) -> int:
    return int(report.get("int8_graph_bytes") or report["int8_bytes"])


def markdown(report: dict[str, Any]) -> str:
    """A report a person reads: verdict first, then accuracy, sizes, data and settings."""
    lines = [
        *_verdict_lines(report),
        *_accuracy_lines(report),
        *_sizes_lines(report),
        *_data_lines(report),
        *_settings_lines(report),
    ]
    return "\n".join(lines)


def _key(report: dict[str, Any]) -> str:
    return "int8" if report["quantization"]["mode"] == "int8" else "tflite"


def _verdict_lines(report: dict[str, Any]) -> list[str]:
    """The title, the gate's verdict with its numbers, then what the reader must know before the numbers."""
    key = _key(report)
    f, t = report["float"], report[key]
    # never PASSED above a warning that the model learned nothing: parity with a model that guesses proves nothing
    verdict = (
        "FAILED"
        if not report["passed"]
        else "passed, but the model learned nothing"
        if report.get("learned_nothing")
        else "PASSED"
    )
    lines = [
        f"# edgecls convert report: {report['model']['arch']}",
        "",
        f"**Parity gate {verdict}**: {key} top-1 {_pct(t['top1'])} vs float {_pct(f['top1'])} "
        f"(drop {report['drop_points']:.2f} points, allowed {report['max_drop']:.2f}"
        + (
            f"; the test split has {report['test_images']} images, so each image the model gets right or wrong "
            f"moves top-1 by {report['points_per_image']:.2f} points"
            if report.get("test_images")
            else ""
        )
        + f"); top-1 agreement {_pct(report['agreement'])}"
        + (f" (at least {_pct(report['min_agreement'])})" if report.get("min_agreement") is not None else "")
        + ".",
        "",
    ]
    if not report["passed"]:
        lines += [f"> {report['gate_message']}", ""]
    for warning in report.get("warnings", []):
        lines += [f"> **Warning:** {warning[0].upper()}{warning[1:]}.", ""]
    if report.get("test_source") != "test":
        lines += [f"> Note: {report['test_note']}", ""]
    stopped = (report.get("history") or {}).get("stopped_early")
    if stopped:
        best = (
            f"epoch {stopped['best_epoch']}, the lowest validation loss" if stopped["best_epoch"] else "the last epoch"
        )
        skipped = f"; the {', '.join(stopped['skipped_stages'])} stage was skipped" if stopped["skipped_stages"] else ""
        lines += [
            (
                f"> Training was stopped early by the user in the {stopped['stage']} stage, at epoch "
                f"{stopped['epoch']} of {stopped['epochs']}{skipped}. The model is the weights of {best}."
            ),
            "",
        ]
    return lines


def _accuracy_lines(report: dict[str, Any]) -> list[str]:
    """Top-1 (and top-5) of the float and the exported model beside the baseline and teacher, per class, plots."""
    q = report["quantization"]["mode"]
    f, t = report["float"], report[_key(report)]
    lines: list[str] = []
    lines += [
        "## Accuracy on the held-out split",
        "",
        "| model | top-1 |" + (" top-5 |" if "top5" in f else ""),
        "|---|---|" + ("---|" if "top5" in f else ""),
    ]
    rows = [("float (Keras)", f), (f"{q} TFLite (edgecls runtime)", t)]
    for name, m in rows:
        lines.append(f"| {name} | {_pct(m['top1'])} |" + (f" {_pct(m.get('top5'))} |" if "top5" in f else ""))
    baseline = report.get("baseline")
    if baseline:
        lines.append(
            f"| baseline: the tutorial CNN (float) | {_pct(baseline['float_top1'])} |" + (" |" if "top5" in f else "")
        )
    teacher = report.get("teacher")
    if teacher:
        lines.append(
            f"| teacher, distilled from (float) | {_pct(teacher['test_top1'])} |" + (" |" if "top5" in f else "")
        )
    if baseline:
        lines += [
            "",
            (
                "The baseline is the textbook CNN (one 3x3 convolution, max pooling, a dense layer; `--arch "
                "seed-cnn`) trained on the same split at 64 px: a yardstick, so a model that does not beat it is "
                "easy to spot (`--no-baseline` skips it)."
            ),
        ]
    lines += ["", "Per class (quantised model):", "", "| class | precision | recall | support |", "|---|---|---|---|"]
    for name, m in t["per_class"].items():
        lines.append(f"| {name} | {_pct(m['precision'])} | {_pct(m['recall'])} | {m['support']} |")
    lines += [
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
        "![training curves](training_curves.png)",
        "",
        *_kept_lines(report.get("history")),
    ]
    return lines


def _sizes_lines(report: dict[str, Any]) -> list[str]:
    """The model's size on disk and against the float network, its parameters, and what the int8 method, the
    teacher and the IMX500 export add."""
    q = report["quantization"]["mode"]
    return [
        "## Sizes",
        "",
        (
            f"- {q} model: {report['int8_bytes'] / 1024:.1f} KiB on disk (model.tflite with its metadata and labels); "
            f"its network {_graph(report) / 1024:.1f} KiB, {_graph(report) / max(1, report['float_tflite_bytes']):.2f}x "
            f"the float TFLite network ({report['float_tflite_bytes'] / 1024:.1f} KiB)"
        ),
        f"- parameters: {report['model']['params']:,}",
        *_int8_method(report),
        *_teacher_lines(report.get("teacher")),
        *_imx500_lines(report.get("imx500")),
        "",
    ]


def _data_lines(report: dict[str, Any]) -> list[str]:
    """The classes, the split, --extra-data, the imbalance and the skipped files."""
    lines = [
        "## Data",
        "",
        f"- classes ({len(report['classes'])}): {', '.join(report['classes'])}",
        "- split sizes: " + ", ".join(f"{k} {v}" for k, v in report["split_sizes"].items()),
        *(
            [
                f"- of the training images, {sum(report['extra_data']['train_images'].values())} came from --extra-data "
                f"({', '.join(report['extra_data']['folders'])}): "
                + ", ".join(f"{k} {v}" for k, v in report["extra_data"]["train_images"].items())
            ]
            if report.get("extra_data")
            else []
        ),
        f"- training class imbalance (largest/smallest): {report['imbalance']:.2f}"
        + (
            " - consider --class-weights auto"
            if report["imbalance"] > 1.5 and not report["settings"].get("class_weights")
            else ""
        ),
        f"- skipped files: {len(report['skipped'])}",
    ]
    for item in report["skipped"][:20]:
        lines.append(f"  - `{item['path']}`: {item['reason']}")
    if len(report["skipped"]) > 20:
        lines.append(f"  - ... and {len(report['skipped']) - 20} more (see report.json)")
    return lines


def _settings_lines(report: dict[str, Any]) -> list[str]:
    """The settings that applied, and the wall time."""
    return [
        "",
        "## Settings",
        "",
        "```json",
        json.dumps(report["settings"], indent=2),
        "```",
        "",
        f"Wall time {report['timing']['total_s']:.0f} s (training {report['timing']['train_s']:.0f} s"
        + _per_epoch(report.get("history"))
        + ").",
        "",
    ]
