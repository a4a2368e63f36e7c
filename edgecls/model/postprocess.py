"""From raw output tensor to scores in [0, 1] and ranked predictions. Pure numpy, no model needed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgecls.errors import ConfigError

ACTIVATIONS = ("auto", "probabilities", "logits")


@dataclass(frozen=True, slots=True)
class Prediction:
    """One ranked class: output ``index``, its ``label`` and a ``score`` in [0, 1]."""

    index: int
    label: str
    score: float


@dataclass(frozen=True)
class OutputSpec:
    """The classifier output tensor: raw ``size`` (1 = a single sigmoid unit), dtype and quantisation."""

    size: int
    dtype: str
    scale: float = 0.0
    zero_point: int = 0

    @property
    def num_classes(self) -> int:
        """Classes the scores cover: a single sigmoid unit scores two classes (negative, positive)."""
        return 2 if self.size == 1 else self.size


class Postprocessor:
    """Dequantises an output tensor and turns it into class scores in [0, 1].

    ``activation``: ``"probabilities"`` (softmax or sigmoid already applied in the model), ``"logits"`` (apply
    softmax, or sigmoid for one unit), or ``"auto"`` (values outside [0, 1] are treated as logits).

    >>> post = Postprocessor(OutputSpec(1, "float32"))
    >>> post.scores(np.array([0.75], np.float32)).tolist()
    [0.25, 0.75]
    """

    def __init__(self, spec: OutputSpec, *, activation: str = "auto") -> None:
        if activation not in ACTIVATIONS:
            raise ConfigError(
                f"output activation {activation!r} is not supported; expected one of {', '.join(ACTIVATIONS)}"
            )
        self.spec = spec
        self.activation = activation
        self._lut: np.ndarray | None = None
        if spec.dtype in ("uint8", "int8") and spec.scale > 0:
            # Index by the raw byte: int8 values are read through a uint8 view, so the table is laid out in byte order.
            raw = np.arange(256, dtype=np.uint8).view(spec.dtype).astype(np.float64)
            self._lut = (spec.scale * (raw - spec.zero_point)).astype(np.float32)
        # Quantised outputs whose every possible value lies in [0, 1] are probabilities, decided once: the ranking can
        # then run on the raw integers (the order is the same since scale > 0) and dequantise only the top k.
        self._rank_raw = (
            self._lut is not None
            and spec.size > 1
            and (activation == "probabilities" or (activation == "auto" and _within_unit(self._lut)))
        )
        self._order_mask = np.uint8(0x7F if spec.dtype == "int8" else 0xFF)

    def dequantize(self, raw: np.ndarray) -> np.ndarray:
        """The output's real values as a flat float32 vector."""
        flat = raw.reshape(-1)
        if self._lut is not None:
            return self._lut[flat.view(np.uint8)]
        return flat.astype(np.float32)

    def scores(self, raw: np.ndarray) -> np.ndarray:
        """Class scores in [0, 1], one per class (two for a single sigmoid unit)."""
        values = self.dequantize(raw)
        logits = self.activation == "logits" or (self.activation == "auto" and not _within_unit(values))
        if values.size == 1:
            p = float(1.0 / (1.0 + np.exp(-values[0]))) if logits else float(values[0])
            p = min(1.0, max(0.0, p))
            return np.array([1.0 - p, p], dtype=np.float32)
        if logits:
            e = np.exp(values - values.max())
            return e / e.sum()
        return np.clip(values, 0.0, 1.0, out=values)

    def top_k(self, raw: np.ndarray, k: int, threshold: float = 0.0) -> list[tuple[int, float]]:
        """The ``k`` best (index, score) pairs of a raw output tensor; see the module function ``top_k``."""
        if not self._rank_raw:
            return top_k(self.scores(raw), k, threshold)
        _check_rank_args(k, threshold)
        raw_bytes = raw.reshape(-1).view(np.uint8)
        # One key whose ascending order is the scores' descending order (uint8: 255 - v; int8: the same on the
        # sign-flipped byte), so a stable sort ranks best first with ties broken by the lower index.
        order = np.argsort(np.bitwise_xor(raw_bytes, self._order_mask), kind="stable")[:k]
        scores = self._lut[raw_bytes[order]]  # type: ignore[index]
        return [(i, s) for i, s in zip(order.tolist(), scores.tolist()) if s >= threshold]


def _within_unit(values: np.ndarray) -> bool:
    return bool(values.min() >= -1e-3 and values.max() <= 1 + 1e-3)


def _check_rank_args(k: int, threshold: float) -> None:
    if k < 1:
        raise ConfigError(f"top_k must be at least 1 (received {k})")
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold must be between 0 and 1 (received {threshold})")


def top_k(scores: np.ndarray, k: int, threshold: float = 0.0) -> list[tuple[int, float]]:
    """The ``k`` best (index, score) pairs with score >= ``threshold``, best first; ties keep the lower index.

    >>> top_k(np.array([0.1, 0.7, 0.2]), 2)
    [(1, 0.7), (2, 0.2)]
    """
    _check_rank_args(k, threshold)
    order = np.argsort(-scores, kind="stable")[:k]
    return [(i, s) for i, s in zip(order.tolist(), scores[order].tolist()) if s >= threshold]


def predictions(pairs: Sequence[tuple[int, float]], labels: Sequence[str] | None) -> list[Prediction]:
    """Attach labels to ranked (index, score) pairs; without labels the label is the index as text."""
    if labels is None:
        return [Prediction(i, str(i), s) for i, s in pairs]
    return [Prediction(i, labels[i], s) for i, s in pairs]
