from __future__ import annotations

import numpy as np
import pytest

from edgecls.errors import ConfigError
from edgecls.model.postprocess import OutputSpec, Postprocessor, predictions, top_k


def test_quantised_softmax_is_dequantised_and_ranked_on_raw_values():
    post = Postprocessor(OutputSpec(5, "uint8", 1 / 256, 0))
    raw = np.array([[10, 200, 30, 200, 0]], np.uint8)
    assert post.top_k(raw, 3) == [(1, 200 / 256), (3, 200 / 256), (2, 30 / 256)]
    assert post.scores(raw).tolist() == pytest.approx([10 / 256, 200 / 256, 30 / 256, 200 / 256, 0])


def test_int8_output_ranking_matches_the_float_ranking():
    post = Postprocessor(OutputSpec(1001, "int8", 1 / 256, -128))
    rng = np.random.default_rng(3)
    for _ in range(20):
        raw = rng.integers(-128, 128, (1, 1001)).astype(np.int8)
        assert post.top_k(raw, 5) == top_k(post.scores(raw), 5)


def test_single_sigmoid_unit_scores_two_classes():
    assert Postprocessor(OutputSpec(1, "float32")).scores(np.array([[0.8]], np.float32)).tolist() == pytest.approx(
        [0.2, 0.8]
    )
    q = Postprocessor(OutputSpec(1, "uint8", 1 / 256, 0))
    assert q.scores(np.array([[192]], np.uint8)).tolist() == pytest.approx([0.25, 0.75])
    logit = Postprocessor(OutputSpec(1, "float32"))
    assert logit.scores(np.array([[2.0]], np.float32))[1] == pytest.approx(1 / (1 + np.exp(-2.0)))


def test_logits_become_probabilities():
    post = Postprocessor(OutputSpec(3, "float32"))
    scores = post.scores(np.array([[2.0, -1.0, 0.5]], np.float32))
    assert scores.sum() == pytest.approx(1.0) and scores.argmax() == 0 and scores.min() > 0
    forced = Postprocessor(OutputSpec(3, "float32"), activation="logits")
    assert forced.scores(np.array([0.2, 0.3, 0.5], np.float32)).sum() == pytest.approx(1.0)
    assert forced.scores(np.array([0.2, 0.3, 0.5], np.float32))[2] < 0.5  # softmax, not the raw value


def test_top_k_threshold_and_ties():
    scores = np.array([0.3, 0.3, 0.1, 0.3])
    assert top_k(scores, 2) == [(0, 0.3), (1, 0.3)]
    assert top_k(scores, 10, threshold=0.2) == [(0, 0.3), (1, 0.3), (3, 0.3)]
    with pytest.raises(ConfigError, match="top_k must be at least 1"):
        top_k(scores, 0)
    with pytest.raises(ConfigError, match="threshold"):
        top_k(scores, 1, threshold=1.5)


def test_predictions_carry_labels_or_indices():
    assert predictions([(1, 0.9)], ["a", "b"])[0].label == "b"
    assert predictions([(1, 0.9)], None)[0].label == "1"
