"""Writing files so that an interrupted run never leaves a half-written one: temporary file, fsync, rename."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from edgecls.errors import WriteError


def os_reason(exc: OSError) -> str:
    """A few words for a message about an OSError: "a symlink loop" for ELOOP (whose strerror, "Too many levels of
    symbolic links", says less), else the system's own words."""
    import errno

    return "a symlink loop" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: readers see the old file or the whole new one, never a part.

    A folder or file that cannot be written raises WriteError naming it and the reason."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise WriteError(f"cannot write {target} ({os_reason(exc)}); check the folder and its permissions") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise WriteError(f"cannot write {target} ({os_reason(exc)}); is the disk full?") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Text version of atomic_write_bytes (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
