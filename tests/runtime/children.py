"""Child processes for the tests that send signals: the same start however the suite was started, and an end in a
``finally`` that leaves nothing behind.

A non-interactive shell starts a background job (``pytest ... &`` in a CI script) with SIGINT ignored, and a child
inherits that: a test that sends SIGINT must give its child the default disposition a terminal gives, or it tests
the wrong thing (edgecls honours an ignored SIGINT, docs/device.md).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Long enough for a model to load and a few frames to pass on a machine at load ~15; conditions end the waits early.
PATIENCE_S = 120.0


def _caught(signum: int, frame: Any) -> None:
    """A handler here is SIG_DFL in an exec'd child (the parent itself would only shrug a SIGHUP off meanwhile)."""


# What an interactive shell gives a foreground command, and what `nohup cmd &` in a script gives a background job.
FROM_A_TERMINAL = {signal.SIGINT: signal.default_int_handler, signal.SIGHUP: _caught}
NOHUP_BACKGROUND_JOB = {signal.SIGINT: signal.SIG_IGN, signal.SIGHUP: signal.SIG_IGN}


@contextmanager
def _dispositions(wanted: dict[signal.Signals, Any]) -> Iterator[None]:
    """Set this (main) thread's signal dispositions for the block: a child started in it inherits SIG_IGN and
    SIG_DFL as they are, and SIG_DFL for a signal with a handler (exec resets those)."""
    previous = {sig: signal.signal(sig, how) for sig, how in wanted.items()}
    try:
        yield
    finally:
        for sig, how in previous.items():
            signal.signal(sig, how)


def edgecls(*args: Any, signals: dict[signal.Signals, Any] = FROM_A_TERMINAL, **kwargs: Any) -> subprocess.Popen:
    """`python -m edgecls ARGS` as a real process (text pipes for stdout and stderr unless given), with SIGINT and
    SIGHUP as ``signals`` says, whatever this process has."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    kwargs.setdefault("text", True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **kwargs.pop("env", {})}
    with _dispositions(signals):
        return subprocess.Popen([sys.executable, "-m", "edgecls", *map(str, args)], env=env, **kwargs)


_ON_A_TERMINAL = (
    "import os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDWR)  # a session leader's first terminal becomes its own\n"
    "os.dup2(fd, 0); os.dup2(fd, 1); os.close(fd)\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'edgecls', *sys.argv[2:]])\n"
)


def edgecls_on_a_terminal(*args: Any, **kwargs: Any) -> tuple[subprocess.Popen, int]:
    """`python -m edgecls ARGS` in a session of its own whose controlling terminal is a new pseudo-terminal (stdin
    and stdout; stderr a pipe): closing the returned master side hangs the terminal up, as an SSH logout does, and
    the kernel sends the process SIGHUP. The caller reads (`drain`) and closes the master."""
    import pty

    master, slave = pty.openpty()
    try:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **kwargs.pop("env", {})}
        with _dispositions(FROM_A_TERMINAL):
            proc = subprocess.Popen(
                [sys.executable, "-c", _ON_A_TERMINAL, os.ttyname(slave), *map(str, args)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
                env=env,
                **kwargs,
            )
    finally:
        os.close(slave)
    return proc, master


def drain(fd: int) -> threading.Thread:
    """Read and drop what a terminal's master side receives, in a thread, so the program never blocks on a full
    terminal; it ends when the terminal is hung up."""

    def read() -> None:
        try:
            while os.read(fd, 65536):
                pass
        except OSError:  # EIO once the other side is gone, EBADF once the master is closed
            pass

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def read_line(pipe: Any, timeout: float = PATIENCE_S) -> bytes:
    """The first line written to ``pipe``, read from its file descriptor with a deadline (no thread keeps the pipe
    open afterwards: the test may close it, as a reader that goes away does)."""
    import select

    fd, data = pipe.fileno(), b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data:
        left = deadline - time.monotonic()
        assert left > 0, f"no line within {timeout:.0f} s: {data[-500:]!r}"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            assert chunk, f"the pipe closed before a whole line: {data[-500:]!r}"
            data += chunk
    return data.split(b"\n", 1)[0]


def end(proc: subprocess.Popen) -> None:
    """For a ``finally``: kill the process if a failed test left it running, and reap it."""
    if proc.poll() is None:
        proc.kill()
    try:
        proc.communicate(timeout=10)
    except (ValueError, OSError, subprocess.TimeoutExpired):  # pipes already closed by the test
        proc.wait(10)


def wait_for_lines(path: Path, count: int, proc: subprocess.Popen | None = None, timeout: float = PATIENCE_S) -> int:
    """Until ``path`` has at least ``count`` whole lines; returns how many it has. Fails when the time is up, or when
    ``proc`` ended first."""
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().count("\n") if path.exists() else 0
        if lines >= count:
            return lines
        assert proc is None or proc.poll() is None, f"the process ended (exit {proc.returncode}) with {lines} lines"
        assert time.monotonic() < deadline, f"{path} has {lines} lines after {timeout:.0f} s, expected {count}"
        time.sleep(0.02)


class Lines:
    """The lines a process writes to one of its pipes, read in a thread, to wait on with a deadline."""

    def __init__(self, pipe: Any) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: Any) -> None:
        for line in pipe:
            self._queue.put(line)
        self._queue.put(None)

    def until(self, done: Callable[[str], bool], timeout: float = PATIENCE_S) -> str:
        """The first line for which ``done`` is true (every line before it is in `seen`)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no such line within {timeout:.0f} s; seen: {''.join(self.seen)[-2000:]}"
                ) from None
            if line is None:
                raise AssertionError(f"the pipe closed first; seen: {''.join(self.seen)[-2000:]}")
            self.seen.append(line)
            if done(line):
                return line

    def rest(self, timeout: float = PATIENCE_S) -> str:
        """Everything until the pipe closes."""
        self._thread.join(timeout)
        while not self._queue.empty():
            line = self._queue.get_nowait()
            if line is not None:
                self.seen.append(line)
        return "".join(self.seen)
