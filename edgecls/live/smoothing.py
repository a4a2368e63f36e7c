"""Steady decisions from noisy per-frame scores: an exponential moving average, then hysteresis.

Pure numpy and no model: a robot should not flip its behaviour because one frame in thirty was blurred.

>>> smoother = Smoother(Smoothing(hold=2), labels=["cat", "dog"])
>>> [smoother.update(np.array(s)).label for s in ([0.9, 0.1], [0.2, 0.8], [0.3, 0.7])]
['cat', 'cat', 'dog']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgecls.errors import ConfigError

# The built-in smoothing: none (each frame decides on its own). One place; a field left out takes its value here.
SMOOTHING_DEFAULTS: dict[str, Any] = {"alpha": 1.0, "hold": 1, "margin": None, "min_score": 0.0}


@dataclass(frozen=True)
class Smoothing:
    """How decisions are smoothed.

    ``alpha``: weight of the newest frame in the moving average of scores (1.0: no averaging). ``hold``: frames a new
    leader must lead in a row before the decision switches to it (1: at once). ``margin``: a leader ahead of the
    current decision by at least this much switches at once, without waiting for ``hold`` (None: never).
    ``min_score``: a leader whose smoothed score is below this is no decision at all (label None).

    A field left out (or given as None) takes the default in SMOOTHING_DEFAULTS and is named in `unset`, so that
    `fill` (and a device profile, `edgecls.device.profiles.Profile.apply`) can give it another value while what was
    given stays. (`dataclasses.replace` passes every field, so its result has none unset.)
    """

    alpha: float | None = None  # None: SMOOTHING_DEFAULTS's (a number once made; see the class docstring)
    hold: int | None = None
    margin: float | None = None
    min_score: float | None = None
    unset: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        unset = frozenset(name for name in SMOOTHING_DEFAULTS if getattr(self, name) is None)
        for name in unset:
            object.__setattr__(self, name, SMOOTHING_DEFAULTS[name])
        object.__setattr__(self, "unset", unset)
        if not 0.0 < self.alpha <= 1.0:
            raise ConfigError(f"smoothing alpha must be in (0, 1] (received {self.alpha})")
        if self.hold < 1:
            raise ConfigError(f"smoothing hold must be at least 1 frame (received {self.hold})")
        if self.margin is not None and not 0.0 < self.margin <= 1.0:
            raise ConfigError(f"smoothing margin must be in (0, 1] (received {self.margin})")
        if not 0.0 <= self.min_score <= 1.0:
            raise ConfigError(f"smoothing min_score must be in [0, 1] (received {self.min_score})")

    def fill(self, other: Smoothing) -> Smoothing:
        """These settings, with the fields left unset here taken from ``other`` (those it sets).

        >>> Smoothing(hold=5).fill(Smoothing(alpha=0.5, hold=3))
        Smoothing(alpha=0.5, hold=5, margin=None, min_score=0.0)
        """
        given = {name: getattr(self, name) for name in SMOOTHING_DEFAULTS if name not in self.unset}
        taken = {name: getattr(other, name) for name in self.unset if name not in other.unset}
        return Smoothing(**given, **taken)


@dataclass(frozen=True, slots=True)
class Decision:
    """The smoothed decision after one frame: ``label`` (None: no class is confident enough), its output ``index``,
    its smoothed ``score``, and whether it ``changed`` on this frame (from ``previous``)."""

    label: str | None
    index: int | None
    score: float
    changed: bool
    previous: str | None = None


class Smoother:
    """Feeds per-frame class scores through `Smoothing` and returns a `Decision` per frame. Not thread-safe: one
    smoother per stream."""

    def __init__(self, smoothing: Smoothing | None = None, *, labels: Sequence[str] | None = None) -> None:
        self.config = smoothing or Smoothing()
        self.labels = labels
        self.reset()

    def reset(self) -> None:
        """Forget the history (e.g. after the camera was reopened)."""
        self._average: np.ndarray | None = None
        self._current: int | None = None
        self._candidate: int | None = None
        self._streak = 0
        self._started = False

    @property
    def trivial(self) -> bool:
        """True when every frame decides on its own (no averaging, hold 1, no margin): see `update_top`."""
        cfg = self.config
        return cfg.alpha == 1.0 and cfg.hold == 1 and cfg.margin is None

    def update_top(self, index: int | None, score: float) -> Decision:
        """The decision of a `trivial` smoother from the frame's top class alone (None: nothing ranked)."""
        leader = index if index is not None and score >= self.config.min_score else None
        previous = self._current
        changed = not self._started or leader != previous
        self._started, self._current = True, leader
        return Decision(
            self._name(leader),
            leader,
            score if leader is not None else 0.0,
            changed,
            self._name(previous) if changed else None,
        )

    @property
    def scores(self) -> np.ndarray | None:
        """The smoothed scores after the last update."""
        return self._average

    def update(self, scores: np.ndarray) -> Decision:
        """Take one frame's scores (one per class, in [0, 1]) and return the decision."""
        scores = np.asarray(scores, dtype=np.float32)
        cfg = self.config
        if self._average is None or self._average.shape != scores.shape:
            self._average = scores.copy()
        else:
            self._average += cfg.alpha * (scores - self._average)
        avg = self._average
        best = int(np.argmax(avg))
        leader: int | None = best if avg[best] >= cfg.min_score else None
        previous = self._current
        if not self._started:
            self._started = True
            self._current = leader
            return self._decision(avg, leader, changed=True, previous=None)
        if leader == self._current:
            self._candidate, self._streak = None, 0
            return self._decision(avg, leader, changed=False, previous=previous)
        if leader == self._candidate:
            self._streak += 1
        else:
            self._candidate, self._streak = leader, 1
        current_score = float(avg[self._current]) if self._current is not None else 0.0
        leader_score = float(avg[leader]) if leader is not None else 0.0
        by_margin = cfg.margin is not None and leader is not None and leader_score - current_score >= cfg.margin
        if self._streak >= cfg.hold or by_margin:
            self._current, self._candidate, self._streak = leader, None, 0
            return self._decision(avg, leader, changed=True, previous=previous)
        return self._decision(avg, self._current, changed=False, previous=previous)

    def _decision(self, avg: np.ndarray, index: int | None, *, changed: bool, previous: int | None) -> Decision:
        score = float(avg[index]) if index is not None else 0.0
        return Decision(self._name(index), index, score, changed, self._name(previous) if changed else None)

    def _name(self, index: int | None) -> str | None:
        if index is None:
            return None
        return self.labels[index] if self.labels is not None else str(index)
