"""Field data for the next model: keep the frames a person should look at (`edgecls run --collect DIR`).

A `Collector` is a sink. Of the results it is given it keeps the frames where the model was unsure (the top score
under ``below``, or the top two within ``margin``), where the decided label changed, and a small random ``sample``
of the rest, at most one every ``every_s`` seconds. Each goes under ``DIR/<predicted label>/`` as a JPEG with a JSON
sidecar of the same name (scores, decision, times, model, frame sequence, why it was kept), so that a person can
move the wrong ones to the right class folder and hand the folder to ``edgecls convert --extra-data DIR``.

Every file is written to a temporary name, synced and renamed, so a power cut leaves whole images or none (a
leftover temporary file is removed at the next start). The folder is bounded by ``max_files`` and ``max_bytes``:
the oldest frames go first, the ones already there when the collector starts included.
"""

from __future__ import annotations

import io
import json
import random
import re
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError, SinkError, WriteError
from .fsutil import atomic_write_bytes, atomic_write_text
from .stream import StreamResult

REASONS = ("changed", "uncertain", "margin", "sample")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)i?b?\s*$", re.IGNORECASE)
_UNSAFE = re.compile(r"[^\w .,+()-]+")


def parse_max(text: str) -> tuple[int | None, int | None]:
    """``--collect-max``: a number of frames (``500``) or a size (``200MB``, ``1.5G``, ``800k``): (files, bytes)."""
    match = _SIZE.match(str(text))
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"--collect-max {text!r}: expected a number of frames (500) or a size (200MB, 1.5GB)")
    number, unit = float(match.group(1)), match.group(2).lower()
    if not unit and not str(text).strip().lower().endswith("b"):
        if number != int(number):
            raise ConfigError(f"--collect-max {text!r}: a number of frames is a whole number")
        return int(number), None
    return None, int(number * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit])


@dataclass(frozen=True)
class CollectPolicy:
    """Which frames to keep: ``below`` (top score under it), ``margin`` (top two closer than it; needs top-k >= 2),
    ``changes`` (the decided label changed), ``sample`` (the share of the other frames kept at random); at most
    one frame every ``every_s`` seconds; the folder bounded by ``max_files`` and/or ``max_bytes``."""

    below: float = 0.6
    margin: float = 0.1
    changes: bool = True
    sample: float = 0.01
    every_s: float = 1.0
    max_files: int | None = 1000
    max_bytes: int | None = None
    quality: int = 90

    def __post_init__(self) -> None:
        checks = [
            (0.0 <= self.below <= 1.0, f"--collect-below must be in [0, 1] (received {self.below})"),
            (0.0 <= self.margin <= 1.0, f"--collect-margin must be in [0, 1] (received {self.margin})"),
            (0.0 <= self.sample <= 1.0, f"--collect-sample must be in [0, 1] (received {self.sample})"),
            (self.every_s >= 0.0, f"--collect-every must be >= 0 seconds (received {self.every_s})"),
            (self.max_files is None or self.max_files >= 1, "--collect-max must keep at least one frame"),
            (self.max_bytes is None or self.max_bytes >= 1, "--collect-max must allow at least one byte"),
            (1 <= self.quality <= 100, f"JPEG quality must be 1-100 (received {self.quality})"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def reason(self, result: StreamResult, draw: float) -> str | None:
        """Why ``result``'s frame should be kept (one of REASONS), or None. ``draw`` is a uniform number in [0, 1)."""
        if self.changes and result.decision.changed:
            return "changed"
        scores = [p.score for p in result.predictions]
        if not scores or scores[0] < self.below:
            return "uncertain"
        if len(scores) >= 2 and scores[0] - scores[1] < self.margin:
            return "margin"
        if draw < self.sample:
            return "sample"
        return None


def folder_name(label: str | None) -> str:
    """A class folder name for a label: what a file system and `edgecls convert` accept (no '/', no leading dot)."""
    name = _UNSAFE.sub("_", label or "").strip(" .") if label else ""
    return name[:100] or "_unlabelled"


def to_rgb(frame: np.ndarray, color: str) -> np.ndarray:
    """An RGB (or single-channel gray) uint8 image from a frame in a source's ``color`` order."""
    if color == "yuv420":
        from .sources import yuv420_to_rgb

        return yuv420_to_rgb(frame)
    if frame.ndim == 2 or frame.shape[2] == 1:
        return frame.reshape(frame.shape[0], frame.shape[1])
    rgb = frame[..., :3]
    return np.ascontiguousarray(rgb[..., ::-1] if color == "bgr" else rgb)


class Collector:
    """The ``--collect DIR`` sink (see the module docstring). ``model`` names the model in the sidecars; ``seed``
    fixes the random sample. Counters: `saved` (by reason in `by_reason`), `removed` (to stay in bounds),
    `rate_limited` (wanted, but within ``every_s`` of the last one)."""

    def __init__(self, root: str | Path, policy: CollectPolicy | None = None, *, model: str | None = None,
                 seed: int | None = None) -> None:
        self.root = Path(root)
        self.path = self.root  # how sink errors name it
        self.policy = policy or CollectPolicy()
        self.model = model
        self.saved = self.removed = self.rate_limited = 0
        self.by_reason: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._last = -float("inf")
        self._bytes = 0
        self._kept: deque[tuple[Path, int]] = deque()  # (image, bytes of image and sidecar), oldest first
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._adopt_existing()
        except OSError as exc:
            raise SinkError(f"cannot use {self.root} for collected frames ({exc.strerror or exc})") from None

    def _adopt_existing(self) -> None:
        """Frames already in the folder count against the bounds (oldest first); temporary files a power cut left
        behind are removed."""
        found = []
        for folder in self.root.iterdir():
            if not folder.is_dir() or folder.name.startswith("."):
                continue
            for path in folder.iterdir():
                if path.name.startswith(".") and path.name.endswith(".tmp"):
                    path.unlink(missing_ok=True)
                elif path.suffix == ".jpg" and path.is_file():
                    sidecar = path.with_suffix(".json")
                    size = path.stat().st_size + (sidecar.stat().st_size if sidecar.is_file() else 0)
                    found.append((path.stat().st_mtime, path.name, path, size))
        for _, _, path, size in sorted(found):
            self._kept.append((path, size))
            self._bytes += size

    @property
    def files(self) -> int:
        """Frames in the folder now."""
        return len(self._kept)

    def write(self, result: StreamResult) -> None:
        reason = self.policy.reason(result, self._random.random())
        if reason is None or result.frame is None:
            return
        now = time.monotonic()
        if now - self._last < self.policy.every_s:
            self.rate_limited += 1
            return
        self._last = now
        self._save(result, reason)

    def _save(self, result: StreamResult, reason: str) -> None:
        from PIL import Image

        label = result.decision.label if result.decision.label is not None else (
            result.top.label if result.top is not None else None)
        folder = self.root / folder_name(label)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(result.timestamp))
        image_path = folder / f"{stamp}-{result.sequence:07d}.jpg"
        buffer = io.BytesIO()
        Image.fromarray(to_rgb(result.frame, result.color)).save(buffer, "JPEG", quality=self.policy.quality)
        sidecar = {
            "image": image_path.name,
            "predicted": label,
            "reason": reason,
            "sequence": result.sequence,
            "timestamp": round(result.timestamp, 6),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(result.timestamp)),
            "model": self.model,
            "predictions": [{"index": p.index, "label": p.label, "score": round(p.score, 6)}
                            for p in result.predictions],
            "decision": result.to_dict()["decision"],
        }
        text = json.dumps(sidecar, indent=1) + "\n"
        try:
            atomic_write_bytes(image_path, buffer.getvalue())  # the image first: a sidecar never names a missing one
            atomic_write_text(image_path.with_suffix(".json"), text)
        except WriteError as exc:
            raise SinkError(str(exc)) from None
        self.saved += 1
        self.by_reason[reason] += 1
        self._kept.append((image_path, buffer.getbuffer().nbytes + len(text.encode())))
        self._bytes += self._kept[-1][1]
        self._trim()

    def _trim(self) -> None:
        max_files, max_bytes = self.policy.max_files, self.policy.max_bytes
        while len(self._kept) > 1 and ((max_files is not None and len(self._kept) > max_files)
                                       or (max_bytes is not None and self._bytes > max_bytes)):
            path, size = self._kept.popleft()
            path.unlink(missing_ok=True)
            path.with_suffix(".json").unlink(missing_ok=True)
            self._bytes -= size
            self.removed += 1

    def summary(self) -> str:
        reasons = ", ".join(f"{self.by_reason[r]} {r}" for r in REASONS if self.by_reason[r])
        return (f"collected {self.saved} frame(s) in {self.root}" + (f" ({reasons})" if reasons else "")
                + f"; {self.files} there now" + (f", {self.removed} oldest removed to stay within --collect-max"
                                                 if self.removed else ""))

    def close(self) -> None:
        return None

