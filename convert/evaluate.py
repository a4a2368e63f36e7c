"""The parity gate's measurements: float Keras model vs the int8 TFLite model run through edgecls.Classifier."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgecls import Classifier
from edgecls.errors import EdgeclsError
from edgecls.nativelog import quiet_native_stderr


def float_probabilities(
    model: Any,
    images: Any,
    *,
    sigmoid: bool,
    batch_size: int = 64,
    normalize: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Class probabilities (N x K) of the float Keras model on uint8 images already at input size (an array, or a
    cached `ImageStore`), ``normalize``d batch by batch, so memory holds one batch of floats, not the split."""
    rows = []
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start : start + batch_size])
        batch = normalize(batch) if normalize is not None else batch.astype(np.float32)
        rows.append(np.asarray(model.predict_on_batch(batch)))
    out = np.concatenate(rows) if rows else np.zeros((0, *model.output_shape[1:]), np.float32)
    if sigmoid:
        p = out.reshape(-1)
        return np.stack([1.0 - p, p], axis=1)
    return out


def tflite_probabilities(model_path: Path, paths: Sequence[Path], *, num_threads: int | None = None) -> np.ndarray:
    """Class probabilities of the exported model on the original files, through the device runtime itself:
    the same file decoding, resize, colour order and quantisation the device will use."""
    rows = []
    with quiet_native_stderr():
        clf = Classifier(model_path, num_threads=num_threads)
    with clf:
        for path in paths:
            try:
                rows.append(clf.scores(path))
            except EdgeclsError:  # a file that decoded during training and fails now: count it as no answer
                rows.append(np.full(clf.output_spec.num_classes, np.nan, dtype=np.float32))
    return np.stack(rows)


def topk_accuracy(labels: np.ndarray, probs: np.ndarray, k: int) -> float:
    top = np.argsort(-np.nan_to_num(probs, nan=-1.0), axis=1, kind="stable")[:, :k]
    return float(np.mean([label in row for label, row in zip(labels, top)]))


def confusion(labels: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def per_class(matrix: np.ndarray, classes: Sequence[str]) -> dict[str, dict[str, float]]:
    """Precision and recall per class from a confusion matrix (rows: truth, columns: prediction)."""
    result = {}
    for i, name in enumerate(classes):
        tp = matrix[i, i]
        predicted, actual = matrix[:, i].sum(), matrix[i, :].sum()
        result[name] = {
            "precision": float(tp / predicted) if predicted else 0.0,
            "recall": float(tp / actual) if actual else 0.0,
            "support": int(actual),
        }
    return result


def summarize(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """top-1 (and top-5 when there are more than 5 classes), per-class precision/recall, confusion matrix."""
    predicted = np.argmax(np.nan_to_num(probs, nan=-1.0), axis=1)
    matrix = confusion(labels, predicted, len(classes))
    out: dict[str, Any] = {"top1": topk_accuracy(labels, probs, 1)}
    if len(classes) > 5:
        out["top5"] = topk_accuracy(labels, probs, 5)
    out["per_class"] = per_class(matrix, classes)
    out["confusion_matrix"] = matrix.tolist()
    return out


def compare(
    labels: np.ndarray, float_probs: np.ndarray, int8_probs: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Both models' metrics, their top-1 agreement and the accuracy drop in percentage points."""
    f = summarize(labels, float_probs, classes)
    q = summarize(labels, int8_probs, classes)
    agreement = float(np.mean(np.argmax(float_probs, axis=1) == np.argmax(np.nan_to_num(int8_probs, nan=-1.0), axis=1)))
    return {"float": f, "int8": q, "agreement": agreement, "drop_points": round((f["top1"] - q["top1"]) * 100, 3)}
