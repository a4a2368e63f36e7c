"""`edgecls bench`: latency of a classifier on this machine, split into preprocess, invoke and postprocess.

Each run classifies one frame the way a camera loop does: resize and quantise a camera-sized frame into the input
tensor, invoke, rank the outputs. Warm-up runs are excluded. Results are plain data (``to_dict``) so they can be
compared across devices, and `edgecls tune` reuses them to measure trials.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgecls.errors import ConfigError
from edgecls.model.classifier import Classifier

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Summary:
    """Percentiles and mean of one latency part, in milliseconds."""

    p50: float
    p90: float
    p99: float
    mean: float
    min: float
    max: float

    @classmethod
    def of(cls, values: np.ndarray) -> Summary:
        p50, p90, p99 = (float(np.percentile(values, p)) for p in PERCENTILES)
        return cls(p50, p90, p99, float(values.mean()), float(values.min()), float(values.max()))

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class BenchResult:
    model: str
    runs: int
    warmup: int
    frame: tuple[int, int]  # width, height of the frame fed to preprocessing
    preprocess: Summary
    invoke: Summary
    postprocess: Summary
    total: Summary
    classifier: dict[str, Any]
    budget_ms: float | None = None

    @property
    def throughput_fps(self) -> float:
        return 1000.0 / self.total.mean if self.total.mean > 0 else float("inf")

    @property
    def within_budget(self) -> bool | None:
        return None if self.budget_ms is None else self.total.p90 <= self.budget_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "runs": self.runs,
            "warmup": self.warmup,
            "frame": {"width": self.frame[0], "height": self.frame[1]},
            "latency_ms": {
                "preprocess": self.preprocess.to_dict(),
                "invoke": self.invoke.to_dict(),
                "postprocess": self.postprocess.to_dict(),
                "total": self.total.to_dict(),
            },
            "throughput_fps": round(self.throughput_fps, 2),
            "budget_ms": self.budget_ms,
            "within_budget": self.within_budget,
            **self.classifier,
            "machine": machine(),
        }


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "system": platform.system(),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def _cpu_model() -> str:
    """The board or CPU name from /proc/cpuinfo: a Raspberry Pi's "Model" line (the board), else "model name" (x86,
    32-bit ARM), "Hardware" or "Processor". Keys are matched whole and case-sensitively: x86's "model : 2" is a
    CPU model number, not a name."""
    return cpu_model_from(_read_cpuinfo()) or platform.processor() or "unknown"


def _read_cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            return fh.read(1 << 20)
    except OSError:
        return ""


def cpu_model_from(cpuinfo: str) -> str | None:
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip():
            fields.setdefault(key.strip(), value.strip())
    for key in ("Model", "model name", "Hardware", "Processor"):
        if key in fields:
            return fields[key]
    return None


def benchmark(
    clf: Classifier,
    *,
    runs: int = 200,
    warmup: int = 20,
    frame: np.ndarray | None = None,
    frame_size: tuple[int, int] = (640, 480),
    budget_ms: float | None = None,
    seed: int = 0,
) -> BenchResult:
    """Time ``runs`` classifications of ``frame`` (default: a random camera-sized RGB frame) after ``warmup`` ones."""
    if runs < 1 or warmup < 0:
        raise ConfigError(f"runs must be >= 1 and warmup >= 0 (received runs={runs}, warmup={warmup})")
    if frame is None:
        w, h = frame_size
        frame = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    times = np.empty((runs, 3))
    for i in range(warmup + runs):
        clf.classify(frame, top_k=5)  # the runtime's own path: preprocess into the input tensor, invoke, rank
        timing = clf.last_timing
        if i >= warmup and timing is not None:
            times[i - warmup] = (timing.preprocess_ms, timing.invoke_ms, timing.postprocess_ms)
    parts = [Summary.of(times[:, k]) for k in range(3)]
    facts = clf.describe()
    classifier = {
        "backend": facts["backend"],
        "delegate": facts["delegate"],
        "fallback_reason": facts["fallback_reason"],
        "input": facts["input"],
        "model_bytes": facts["size_bytes"],
    }
    return BenchResult(
        str(clf.path),
        runs,
        warmup,
        (int(frame.shape[1]), int(frame.shape[0])),
        *parts,
        Summary.of(times.sum(axis=1)),
        classifier,
        budget_ms,
    )
