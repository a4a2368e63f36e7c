"""The parity gate's arithmetic, on hand-made probabilities (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
from edgecls.convert.evaluate import compare, confusion, per_class, summarize, topk_accuracy


def test_top1_top5_and_confusion():
    labels = np.array([0, 1, 2, 3, 4, 5])
    probs = np.eye(6)[[0, 1, 2, 3, 5, 4]] * 0.5 + np.eye(6) * 0.3 + 0.01  # the last two swapped, truth second
    assert topk_accuracy(labels, probs, 1) == pytest.approx(4 / 6)
    assert topk_accuracy(labels, probs, 5) == 1.0
    summary = summarize(labels, probs, list("abcdef"))
    assert summary["top1"] == pytest.approx(4 / 6) and summary["top5"] == 1.0
    assert summary["confusion_matrix"][4][5] == 1 and summary["confusion_matrix"][5][4] == 1
    assert "top5" not in summarize(labels[:5], probs[:5, :5], list("abcde"))  # five classes: no top-5


def test_precision_recall_per_class():
    matrix = confusion(np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1]), 2)
    assert matrix.tolist() == [[2, 1], [0, 1]]
    stats = per_class(matrix, ["cat", "dog"])
    assert stats["cat"] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "support": 3}
    assert stats["dog"]["precision"] == 0.5 and stats["dog"]["recall"] == 1.0


def test_compare_reports_drop_and_agreement_and_counts_failed_rows_as_wrong():
    labels = np.array([0, 1, 1, 0])
    float_probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    int8_probs = np.array([[0.8, 0.2], [0.6, 0.4], [np.nan, np.nan], [0.7, 0.3]])
    result = compare(labels, float_probs, int8_probs, ["a", "b"])
    assert result["float"]["top1"] == 1.0
    assert result["int8"]["top1"] == pytest.approx(0.5)  # one flipped, one unreadable
    assert result["drop_points"] == pytest.approx(50.0)
    assert result["agreement"] == pytest.approx(0.5)
