"""TensorFlow's native log, held back for a whole command at the default verbosity.

TensorFlow, XLA and CUDA's loaders write absl/glog lines (``I0000 00:00:... cudart_stub.cc:31] Could not find cuda
drivers ...``) straight to file descriptor 2, at import and later, whatever TF_CPP_MIN_LOG_LEVEL says for some of
them. `held_back` points fd 2 at a pipe for the block and forwards every line that is not such a log line, while
Python's own ``sys.stderr`` (progress, warnings, the ``error:`` line) keeps writing to the real stderr directly. A
fatal (``F``) line is always forwarded: it comes just before the process dies. ``-v`` leaves stderr alone.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import threading
from collections.abc import Iterator

NATIVE_LOG_LINE = re.compile(
    r"^(?:[IWE]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w.\-]+:\d+\] "  # absl / glog: I1207 21:46:44.123456  1234 file.cc:31]
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] \S+:\d+\] )"  # TensorFlow's older C++ log format
)


def is_native_log_line(line: str) -> bool:
    return bool(NATIVE_LOG_LINE.match(line))


@contextlib.contextmanager
def held_back() -> Iterator[None]:
    """Drop native log lines written to fd 2 during the block (see the module's description)."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
        read_fd, write_fd = os.pipe()
    except OSError:  # no usable fd 2 or no descriptors left: leave stderr as it is
        yield
        return
    python_stderr = sys.stderr
    direct = io.TextIOWrapper(
        io.FileIO(os.dup(saved), "w"),
        encoding=getattr(python_stderr, "encoding", None) or "utf-8",
        errors="backslashreplace",
        line_buffering=True,
    )
    os.dup2(write_fd, 2)
    os.close(write_fd)

    def forward() -> None:
        with io.FileIO(read_fd, "r") as pipe:
            pending = b""
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                _write(saved, lines)
            if pending:
                _write(saved, [pending])

    reader = threading.Thread(target=forward, name="edgecls-native-log", daemon=True)
    reader.start()
    if _writes_to_fd2(python_stderr):  # else it is already elsewhere (a test runner's capture, a notebook)
        sys.stderr = direct
    try:
        yield
    finally:
        sys.stderr = python_stderr
        with contextlib.suppress(OSError, ValueError):
            direct.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the reader sees its end
        reader.join(timeout=5)
        with contextlib.suppress(OSError, ValueError):
            direct.close()
        os.close(saved)


def _writes_to_fd2(stream: object) -> bool:
    try:
        return stream.fileno() == 2  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False


def _write(fd: int, lines: list[bytes]) -> None:
    kept = [line for line in lines if not is_native_log_line(line.decode("utf-8", "replace"))]
    if kept:
        with contextlib.suppress(OSError):
            os.write(fd, b"\n".join(kept) + b"\n")
