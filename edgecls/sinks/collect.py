"""Field data for the next model: keep the frames a person should look at (`edgecls run --collect DIR`).

A `Collector` is a sink. Of the results it is given it keeps the frames where the model was unsure (the top score
under ``below``, or the top two within ``margin``), where the decided label changed, and a small random ``sample``
of the rest, at most one every ``every_s`` seconds. Each goes under ``DIR/<class folder>/`` (the predicted label as
`edgecls.sinks.classfolders.folder_name` writes it, which `edgecls convert --extra-data` reads back) as a JPEG named
``DATE-TIME-SEQUENCE.jpg`` with a JSON sidecar of the same name (scores, decision, times, model, frame sequence, why
it was kept, and the `MARKER` field), so that a person can move the wrong ones to the right class folder and hand
the folder to ``edgecls convert --extra-data DIR``.

The collector owns only what it wrote: a frame is its own when its name has that pattern and its sidecar (a regular
file) carries `MARKER` and names it. Only such frames count against ``max_files`` and ``max_bytes`` and are removed
to stay within them (the oldest first, those of earlier runs included); anything else in DIR is left alone. It
never follows a symbolic link inside DIR: class folders are opened with O_NOFOLLOW relative to DIR's own descriptor,
so a link (made before the start or while running) is an error for that class, never a way out of DIR.

One collector per DIR: it holds an exclusive lock (`LOCK_NAME`, flock) for its life, and a second one, in this
process or another, is refused with a SinkError, so the bound holds per folder.

Every file is written to a temporary name, synced and renamed, so a power cut leaves whole images or none (a
leftover temporary file of ours is removed at the next start).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import random
import re
import secrets
import stat
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path

from edgecls.errors import ConfigError, SinkError
from edgecls.fsutil import os_reason
from edgecls.live.stream import StreamResult
from edgecls.model.images import to_rgb
from edgecls.sinks.classfolders import folder_name

__all__ = ["LOCK_NAME", "MARKER", "REASONS", "CollectPolicy", "Collector", "folder_name", "parse_max"]

REASONS = ("changed", "uncertain", "margin", "sample")
MARKER = "edgecls_collect"  # sidecar field (value 1): this frame was written by a Collector
LOCK_NAME = ".edgecls-collect.lock"
_FRAME = r"\d{8}-\d{6}-\d{7,}(?:-\d{1,4})?"  # DATE-TIME-SEQUENCE[-N], as _save names a frame
_FRAME_NAME = re.compile(rf"^{_FRAME}\.jpg$")
_TEMP_NAME = re.compile(rf"^\.{_FRAME}\.(?:jpg|json)\.[A-Za-z0-9_]{{1,16}}\.tmp$")
_MAX_SIDECAR = 1 << 20
_NOFOLLOW, _CLOEXEC = getattr(os, "O_NOFOLLOW", 0), getattr(os, "O_CLOEXEC", 0)  # (absent on Windows: see Collector)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)i?b?\s*$", re.IGNORECASE)


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


class Collector:
    """The ``--collect DIR`` sink (see the module docstring). ``model`` names the model in the sidecars; ``seed``
    fixes the random sample. Counters: `saved` (by reason in `by_reason`), `removed` (to stay in bounds),
    `rate_limited` (wanted, but within ``every_s`` of the last one). `close` releases DIR."""

    def __init__(
        self,
        root: str | Path,
        policy: CollectPolicy | None = None,
        *,
        model: str | None = None,
        seed: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.path = self.root  # how sink errors name it
        self.policy = policy or CollectPolicy()
        self.model = model
        self.saved = self.removed = self.rate_limited = 0
        self.by_reason: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._last = -float("inf")
        self._bytes = 0
        self._kept: deque[tuple[str, str, int]] = deque()  # (folder, image, bytes of image and sidecar), oldest first
        self._root_fd = self._lock_fd = -1
        if os.open not in os.supports_dir_fd or not _NOFOLLOW:
            raise SinkError(
                "--collect needs a system that can open files relative to a folder without following "
                "links (Linux, macOS, the BSDs); this one cannot"
            )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._root_fd = os.open(self.root, _DIR_FLAGS)  # DIR itself may be a link the user named; nothing inside
            self._lock_fd = _lock(self._root_fd, self.root)
            self._adopt_existing()
        except OSError as exc:
            self.close()
            raise SinkError(f"cannot use {self.root} for collected frames ({os_reason(exc)})") from None
        except BaseException:
            self.close()
            raise

    def _adopt_existing(self) -> None:
        """Our frames already in the folder count against the bounds (oldest first); our temporary files that a power
        cut left behind are removed. Links, foreign files and hidden folders are not looked into."""
        found = []
        with os.scandir(self._root_fd) as entries:
            folders = [e.name for e in entries if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")]
        for folder in sorted(folders):
            try:
                fd = _open_folder(self._root_fd, folder)
            except OSError:
                continue  # replaced since the listing, or unreadable: not ours to look into
            try:
                with os.scandir(fd) as entries:
                    names = [e.name for e in entries if e.is_file(follow_symlinks=False)]
                for name in names:
                    if _TEMP_NAME.match(name):
                        with contextlib.suppress(OSError):  # a read-only folder keeps it; collect still starts
                            _unlink(fd, name)
                    elif _FRAME_NAME.match(name) and (owned := _owned(fd, name)) is not None:
                        found.append((owned[1], folder, name, owned[0]))
            finally:
                os.close(fd)
        for _, folder, name, size in sorted(found):
            self._kept.append((folder, name, size))
            self._bytes += size

    @property
    def files(self) -> int:
        """Frames in the folder now."""
        return len(self._kept)

    def write(self, result: StreamResult) -> None:
        reason = self.policy.reason(result, self._random.random())
        if reason is None or result.frame is None:
            return
        if self._root_fd < 0:
            raise SinkError(f"{self.root}: the collector is closed")
        now = time.monotonic()
        if now - self._last < self.policy.every_s:
            self.rate_limited += 1
            return
        self._last = now
        self._save(result, reason)

    def _save(self, result: StreamResult, reason: str) -> None:
        from PIL import Image

        label = (
            result.decision.label
            if result.decision.label is not None
            else (result.top.label if result.top is not None else None)
        )
        folder = folder_name(label)
        buffer = io.BytesIO()
        Image.fromarray(to_rgb(result.frame, result.color)).save(buffer, "JPEG", quality=self.policy.quality)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(result.timestamp))
        where = self.root / folder
        try:
            fd = _open_folder(self._root_fd, folder, create=True)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise SinkError(
                    f"cannot collect into {where}: it is a symbolic link or not a folder; collect writes "
                    f"only into real folders inside {self.root} (remove or rename it)"
                ) from None
            raise SinkError(f"cannot write {where} ({os_reason(exc)}); check the folder and its permissions") from None
        try:
            image = _free_name(fd, f"{stamp}-{result.sequence:07d}")
            text = json.dumps(self._sidecar(result, label, reason, image), indent=1) + "\n"
            _write_new(fd, image, buffer.getvalue())  # the image first: a sidecar never names a missing one
            _write_new(fd, image[:-4] + ".json", text.encode())
        except OSError as exc:
            raise SinkError(f"cannot write {where} ({os_reason(exc)}); is the disk full?") from None
        finally:
            os.close(fd)
        self.saved += 1
        self.by_reason[reason] += 1
        self._kept.append((folder, image, buffer.getbuffer().nbytes + len(text.encode())))
        self._bytes += self._kept[-1][2]
        self._trim()

    def _sidecar(self, result: StreamResult, label: str | None, reason: str, image: str) -> dict[str, object]:
        return {
            MARKER: 1,
            "image": image,
            "predicted": label,
            "reason": reason,
            "sequence": result.sequence,
            "timestamp": round(result.timestamp, 6),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(result.timestamp)),
            "model": self.model,
            "predictions": [
                {"index": p.index, "label": p.label, "score": round(p.score, 6)} for p in result.predictions
            ],
            "decision": result.to_dict()["decision"],
        }

    def _trim(self) -> None:
        max_files, max_bytes = self.policy.max_files, self.policy.max_bytes
        while len(self._kept) > 1 and (
            (max_files is not None and len(self._kept) > max_files)
            or (max_bytes is not None and self._bytes > max_bytes)
        ):
            folder, image, size = self._kept.popleft()
            self._bytes -= size
            self.removed += _remove_owned(self._root_fd, folder, image)

    def summary(self) -> str:
        reasons = ", ".join(f"{self.by_reason[r]} {r}" for r in REASONS if self.by_reason[r])
        return (
            f"collected {self.saved} frame(s) in {self.root}"
            + (f" ({reasons})" if reasons else "")
            + f"; {self.files} there now"
            + (f", {self.removed} oldest removed to stay within --collect-max" if self.removed else "")
        )

    def close(self) -> None:
        """Release DIR (its lock); the frames stay. Safe to call twice."""
        for fd in (self._lock_fd, self._root_fd):
            if fd >= 0:
                os.close(fd)
        self._lock_fd = self._root_fd = -1

    def __del__(self) -> None:
        if getattr(self, "_root_fd", -1) >= 0:
            self.close()


def _lock(root_fd: int, root: Path) -> int:
    """Take DIR's lock for this collector's life (flock on `LOCK_NAME`, which holds the owner's pid); a DIR that
    another collector holds is a SinkError naming that process."""
    import fcntl

    try:
        fd = os.open(LOCK_NAME, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o644, dir_fd=root_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR):
            raise SinkError(
                f"cannot use {root} for collected frames: {root / LOCK_NAME} is a link or a folder; "
                "remove it (collect follows no link inside its folder)"
            ) from None
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        raise SinkError(
            f"{root} is already being collected into by another edgecls run"
            + (f" (process {owner})" if owner.isdigit() else "")
            + "; one collector per folder keeps --collect-max: stop that run, or collect into another "
            "folder"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _open_folder(root_fd: int, name: str, *, create: bool = False) -> int:
    """A descriptor of the class folder ``name`` right inside DIR, never through a link (ELOOP/ENOTDIR if it is one)."""
    if create:
        try:
            os.mkdir(name, 0o777, dir_fd=root_fd)
        except FileExistsError:
            pass
    return os.open(name, _DIR_FLAGS | _NOFOLLOW, dir_fd=root_fd)


def _owned(fd: int, image: str) -> tuple[int, float] | None:
    """(bytes of image and sidecar, image mtime) when ``image`` in the folder ``fd`` is a frame a Collector wrote:
    a regular file with a regular sidecar that carries `MARKER` and names it; else None."""
    try:
        info = os.stat(image, dir_fd=fd, follow_symlinks=False)
        side = os.open(image[:-4] + ".json", os.O_RDONLY | _NOFOLLOW | os.O_NONBLOCK | _CLOEXEC, dir_fd=fd)
    except OSError:
        return None
    with os.fdopen(side, "rb") as fh:
        side_info = os.fstat(fh.fileno())
        if not (stat.S_ISREG(info.st_mode) and stat.S_ISREG(side_info.st_mode)) or side_info.st_size > _MAX_SIDECAR:
            return None
        try:
            data = json.loads(fh.read(_MAX_SIDECAR))
        except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested too deep to be ours
            return None
    if not isinstance(data, dict) or data.get(MARKER) != 1 or data.get("image") != image:
        return None
    return info.st_size + side_info.st_size, info.st_mtime


def _remove_owned(root_fd: int, folder: str, image: str) -> int:
    """Remove a frame and its sidecar if they are still ours (a person may have moved or replaced them): 1 if so."""
    try:
        fd = _open_folder(root_fd, folder)
    except OSError:
        return 0
    try:
        if _owned(fd, image) is None:
            return 0
        _unlink(fd, image)
        _unlink(fd, image[:-4] + ".json")
        return 1
    finally:
        os.close(fd)


def _unlink(fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        pass


def _free_name(fd: int, base: str) -> str:
    """``base.jpg``, or ``base-N.jpg`` where a file of that name (or its sidecar) is there already: never replace a
    file, ours or not."""
    for n in range(10_000):
        name = f"{base}-{n}" if n else base
        if not any(_exists(fd, name + suffix) for suffix in (".jpg", ".json")):
            return name + ".jpg"
    raise FileExistsError(errno.EEXIST, f"no free name for {base}.jpg")


def _exists(fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _write_new(fd: int, name: str, data: bytes) -> None:
    """Write ``name`` in the folder ``fd`` atomically (temporary file, fsync, rename), never through a link."""
    tmp = f".{name}.{secrets.token_hex(4)}.tmp"
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o666, dir_fd=fd)
    try:
        with os.fdopen(out, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
    except BaseException:
        _unlink(fd, tmp)
        raise
