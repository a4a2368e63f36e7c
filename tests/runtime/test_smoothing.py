"""Smoothing and hysteresis on scripted score sequences (pure numpy, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from edgecls.errors import ConfigError
from edgecls.live.smoothing import Smoother, Smoothing

CAT, DOG = [0.9, 0.1], [0.1, 0.9]


def decide(smoothing: Smoothing, sequence: list[list[float]]) -> list[tuple[str | None, bool]]:
    smoother = Smoother(smoothing, labels=["cat", "dog"])
    return [(d.label, d.changed) for d in (smoother.update(np.array(s)) for s in sequence)]


def test_without_smoothing_the_decision_follows_every_frame():
    assert decide(Smoothing(), [CAT, DOG, CAT]) == [("cat", True), ("dog", True), ("cat", True)]


def test_hold_ignores_a_single_glitch_and_switches_after_k_frames():
    sequence = [CAT, CAT, DOG, CAT, DOG, DOG, DOG, CAT]
    assert decide(Smoothing(hold=3), sequence) == [
        ("cat", True),
        ("cat", False),
        ("cat", False),
        ("cat", False),  # one dog frame is a glitch
        ("cat", False),
        ("cat", False),
        ("dog", True),
        ("dog", False),  # three dog frames in a row switch
    ]


def test_the_streak_restarts_when_the_leader_changes():
    smoother = Smoother(Smoothing(hold=2), labels=["a", "b", "c"])
    labels = [smoother.update(np.array(s)).label for s in ([1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 0], [0, 1, 0])]
    assert labels == ["a", "a", "a", "a", "b"]


def test_a_large_margin_switches_at_once_and_a_small_one_waits():
    sequence = [[0.6, 0.4], [0.05, 0.95], [0.45, 0.55], [0.45, 0.55]]
    assert decide(Smoothing(hold=3, margin=0.5), sequence)[:2] == [("cat", True), ("dog", True)]
    assert decide(Smoothing(hold=3, margin=0.5), [[0.6, 0.4], [0.45, 0.55], [0.45, 0.55], [0.45, 0.55]]) == [
        ("cat", True),
        ("cat", False),
        ("cat", False),
        ("dog", True),
    ]


def test_ema_averages_scores_and_delays_a_switch():
    smoother = Smoother(Smoothing(alpha=0.5), labels=["cat", "dog"])
    first = smoother.update(np.array(CAT))
    second = smoother.update(np.array(DOG))
    assert first.score == pytest.approx(0.9)
    assert np.allclose(smoother.scores, [0.5, 0.5])
    assert second.label == "cat"  # a tie keeps the first class: argmax
    third = smoother.update(np.array(DOG))
    assert third.label == "dog" and third.changed and third.previous == "cat"
    assert third.score == pytest.approx(0.7)


def test_min_score_gives_no_decision_for_unsure_frames():
    got = decide(Smoothing(min_score=0.6), [[0.55, 0.45], [0.9, 0.1], [0.5, 0.5]])
    assert got == [(None, True), ("cat", True), (None, True)]


def test_reset_forgets_history():
    smoother = Smoother(Smoothing(alpha=0.1, hold=5), labels=["cat", "dog"])
    smoother.update(np.array(CAT))
    smoother.reset()
    assert smoother.update(np.array(DOG)).label == "dog"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"alpha": 0}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"hold": 0}, "hold"),
        ({"margin": 0}, "margin"),
        ({"min_score": 2}, "min_score"),
    ],
)
def test_bad_settings_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Smoothing(**kwargs)


def test_the_trivial_fast_path_decides_like_the_full_one():
    rng = np.random.default_rng(3)
    sequence = [rng.dirichlet([0.3] * 4) for _ in range(200)]
    for smoothing in (Smoothing(), Smoothing(min_score=0.5)):
        full, fast = Smoother(smoothing, labels="abcd"), Smoother(smoothing, labels="abcd")
        assert fast.trivial
        for scores in sequence:
            top = int(np.argmax(scores))
            a, b = full.update(scores), fast.update_top(top, float(scores[top]))
            assert (a.label, a.changed, a.previous) == (b.label, b.changed, b.previous)
            assert a.score == pytest.approx(b.score)
    assert not Smoother(Smoothing(hold=2)).trivial
