"""The run folder while it is built (`pipeline.staged_output` builds a run in ``.OUT.new-*`` beside ``--out``):
who owns it, so that a later run can remove what a killed one left; whether the disk has room for the run before
the long stages; and the one error a failed write becomes.

An owner file in the staging folder records the process that builds it (pid, the process's start time from /proc
against a reused pid, the host name). A later run into the same ``--out`` removes a sibling ``.OUT.new-*`` folder
only when it is a real folder of ours (not a link, same owner, our owner file in it) and its process has ended.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import shutil
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgecls.errors import WriteError
from edgecls.fsutil import atomic_write_text

log = logging.getLogger(__name__)

OWNER_FILE = ".edgecls-owner.json"
_RANDOM = r"[a-z0-9_]{8}"  # what tempfile.mkdtemp puts after the prefix

# Errors that mean the disk cannot take the run, whichever file was being written.
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
# Errors that mean a file of the run could not be written when they name a file inside the staging folder.
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EIO}

KIB, MIB = 1024, 1024 * 1024
REPORT_BYTES = 512 * KIB  # report.json/.md, two plots and labels.txt (tens of KB each; a 100-class plot more)
MIN_RUN_BYTES = REPORT_BYTES  # checked before anything else: no run fits in less
BASELINE_BYTES = 100 * MIB  # the seed-cnn baseline: about 4 M parameters, its checkpoint kept and one being written


def stage_prefix(out: Path) -> str:
    return f".{out.name}.new-"


def final_path(path: Path) -> Path:
    """Where ``path``, inside a run being built (`pipeline.staged_output`'s ``.OUT.new-*``), will be once the run
    is in place."""
    parts = list(path.parts)
    for i, part in enumerate(parts):
        if part.startswith(".") and ".new-" in part:
            parts[i] = part[1:].rsplit(".new-", 1)[0]
    return Path(*parts)


# --- ownership -----------------------------------------------------------------------------------------------


def claim(stage: Path) -> None:
    """Record this process as the owner of ``stage``."""
    atomic_write_text(stage / OWNER_FILE, json.dumps(_me()) + "\n")


def release(stage: Path) -> None:
    """Remove the owner file just before ``stage`` becomes the run (it is no file of the run)."""
    (stage / OWNER_FILE).unlink(missing_ok=True)


def _me() -> dict[str, Any]:
    pid = os.getpid()
    return {
        "pid": pid,
        "started": process_start(pid),
        "host": socket.gethostname(),
        "boot": _boot_id(),
        "pidns": _pid_namespace(),
        "by": "edgecls convert",
    }


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None without /proc or such pid."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[-1].split()


def process_start(pid: int) -> str | None:
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None  # field 22, starttime (clock ticks after boot)


def _owner_alive(record: dict[str, Any]) -> bool:
    """Whether the run that wrote ``record`` may still be going: anything we cannot tell counts as alive."""
    pid = record.get("pid")
    if record.get("host") != socket.gethostname() or not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return True  # another machine's run on a shared disk, or a record we do not understand
    boot = _boot_id()
    if record.get("boot") and boot and record["boot"] != boot:
        return False  # the machine has restarted since
    if record.get("pidns") != _pid_namespace():
        return True  # a process of another container: its pid means nothing here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # it exists (another user's process)
    fields = _proc_stat(pid)
    if fields is None or record.get("started") is None:
        return True  # it exists and we cannot tell whether it is the same process
    if fields[0] in ("Z", "X"):
        return False  # it has ended; its parent has not collected it yet
    return len(fields) > 19 and fields[19] == record["started"]  # else the pid was reused: the run ended


def _read_owner(stage: Path) -> dict[str, Any] | None:
    """The owner record in ``stage`` when ``stage`` is a real folder of ours holding a regular owner file; links
    are never followed (the folder and the file are opened with O_NOFOLLOW)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        folder = os.open(stage, flags | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return None
    try:
        if os.fstat(folder).st_uid != os.geteuid():
            return None
        fd = os.open(OWNER_FILE, flags | os.O_NONBLOCK, dir_fd=folder)
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_size > 4 * KIB:
                return None
            record = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    finally:
        os.close(folder)
    return record if isinstance(record, dict) and record.get("by") == "edgecls convert" else None


def remove_stale_stages(out: Path) -> list[Path]:
    """Remove the ``.OUT.new-*`` siblings of ``out`` that runs which were killed left behind (their owner process
    has ended); keep any other entry: a live run's, one without our owner file, a link, another user's. Returns
    what was removed. Never fails the run: an entry that cannot be read or removed is left."""
    pattern = re.compile(re.escape(stage_prefix(out)) + _RANDOM)
    removed = []
    try:
        with os.scandir(out.parent) as listing:
            entries = [e for e in listing if pattern.fullmatch(e.name)]
    except OSError:
        return removed
    for entry in entries:
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
        except OSError:
            continue
        stage = Path(entry.path)
        record = _read_owner(stage)
        if record is None or _owner_alive(record):
            continue
        with held_signals():
            shutil.rmtree(stage, ignore_errors=True)  # rmtree does not follow links inside it
        if not stage.exists():
            log.info("removed %s, left by an edgecls run that ended before cleaning up (pid %s)", stage, record["pid"])
            removed.append(stage)
    return removed


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP back for the block (delivered when it ends), so that a renaming or a clean-up
    is never cut half way; this installs no handler. Only in the main thread, where Python handles signals."""
    import signal

    blocked = hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()
    held = {getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held) if blocked else None
    try:
        yield
    finally:
        if blocked:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# --- room on the disk ------------------------------------------------------------------------------------------


def saved_bytes(params: int) -> int:
    """A checkpoint or model.keras of ``params`` parameters: the weights and the optimizer's two moments (12 bytes a
    parameter), and HDF5's and Keras's own ~150 KB."""
    return 12 * params + 256 * KIB


def run_bytes(params: int, *, checkpoints: int, baseline: bool = False, edgetpu: bool = False) -> int:
    """About the most a run writes at once, for a model of ``params`` parameters: ``checkpoints`` training stages'
    best weights kept and one more being written, model.keras, model.tflite (at most 4 bytes a parameter, float)
    twice while it is replaced, an Edge TPU build as large again, the report and plots, and the baseline's
    checkpoints."""
    saved = saved_bytes(params)
    tflite = 2 * (4 * params + 128 * KIB)
    kept = (checkpoints + 1) * saved if checkpoints else 0
    return kept + saved + tflite * (2 if edgetpu else 1) + REPORT_BYTES + (BASELINE_BYTES if baseline else 0)


def check_room(folder: Path, need: int, what: str) -> None:
    """Raise WriteError when the file system of ``folder`` has less than ``need`` bytes free (for this user)."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # cannot tell: the writes themselves will say
    if free < need:
        where = folder.parent if folder.name.startswith(".") and ".new-" in folder.name else folder
        raise WriteError(
            f"not enough free space in {where}: {what} needs about {size_text(need, up=True)} there "
            f"and {size_text(free)} is free; free some space, or give --out on a disk with room"
        )


class RoomWatch:
    """A training observer that passes every event on and, as each training stage starts and after each epoch (its
    checkpoint written), checks that the disk still has room for the rest of the run (``need`` bytes): a disk that
    another program fills during training then stops the run with one error line, before a checkpoint write fails
    inside HDF5, which cannot recover from one (the process crashes at exit: h5py/h5py#914)."""

    def __init__(self, observer: Any, folder: Path, need: int) -> None:
        self._observer, self._folder, self._need = observer, folder, need

    def __getattr__(self, name: str) -> Any:
        return getattr(self._observer, name)

    def stage(self, name: str, epochs: int) -> None:
        check_room(self._folder, self._need, "the rest of this run")
        self._observer.stage(name, epochs)

    def epoch(self, stage: str, epoch: int, epochs: int, logs: dict[str, float]) -> None:
        self._observer.epoch(stage, epoch, epochs, logs)
        check_room(self._folder, self._need, "the rest of this run")


def size_text(n: int, *, up: bool = False) -> str:
    """``n`` bytes in KiB or MiB (one decimal), rounded up (a need) or down (what is free)."""
    unit, name = (MIB / 10, "MiB") if n >= MIB else (KIB, "KiB")
    steps = math.ceil(n / unit) if up else math.floor(n / unit)
    return f"{steps / 10:.1f} MiB" if name == "MiB" else f"{steps} KiB"


# --- a failed write ---------------------------------------------------------------------------------------------


def write_failure(exc: BaseException, stage: Path, out: Path) -> WriteError | None:
    """The one-line error for ``exc`` when it (or what caused it) is a write of the run that failed: a full disk,
    a quota, a read-only file system, or a file of the staging folder that could not be written. None otherwise."""
    if isinstance(exc, WriteError) and str(stage) in str(exc):
        return WriteError(str(exc).replace(str(stage), str(out)) + f" ({out} is as it was)")
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = _errno(current, stage)
        inside = str(stage) in f"{getattr(current, 'filename', None) or ''} {current}"
        if code in _FULL or (code in _UNWRITABLE and inside):
            return WriteError(
                f"cannot write the run beside {out} ({os.strerror(code)}); {out} is as it was: "
                f"{_FIX.get(code, _FIX[errno.ENOSPC])}"
            )
        current = current.__cause__ or current.__context__
    return None


def _errno(exc: BaseException, stage: Path) -> int | None:
    """The system error behind ``exc``: an OSError's errno, or the one HDF5 names in the message of the error h5py
    raises for a file of ``stage`` (a RuntimeError or OSError: "file write failed: ... errno = 28, ...")."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    text = str(exc)
    found = re.search(r"\berrno = (\d+)", text)
    return int(found.group(1)) if found and str(stage) in text else None


_FIX = {
    errno.ENOSPC: "free some space, or give --out on a disk with room",
    errno.EROFS: "give --out on a writable disk",
    errno.EACCES: "check the folder's permissions",
    errno.EPERM: "check the folder's permissions",
    errno.EIO: "check the disk (its kernel log)",
}
