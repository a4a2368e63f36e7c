"""What every `edgecls` command shares, the runtime's and the converter's alike: one error line instead of a
traceback, the exit code of an interrupt, and where log lines go and how many (``-v``, ``EDGECLS_LOG``).

`edgecls.cli.app` and `edgecls.convert.cli` both import this module; neither imports the other's helpers.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer

from edgecls.errors import EdgeclsError

LOG_ENV = "EDGECLS_LOG"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
EXAMPLES_HEADING = "Examples:"


def error(message: str) -> None:
    """Print one error line to stderr."""
    typer.echo(f"error: {message}", err=True)


@contextmanager
def project_errors() -> Iterator[None]:
    """Turn project errors into one stderr line and exit code 1 (never a traceback); an interrupt is exit 130."""
    try:
        yield
    except EdgeclsError as exc:
        error(str(exc))
        raise typer.Exit(code=1) from None
    except KeyboardInterrupt:
        interrupted()
        raise typer.Exit(code=130) from None


_interrupt_told: list[bool] = []


def interrupted() -> None:
    """Say "error: interrupted" once per process (exit code 130 follows)."""
    if not _interrupt_told:
        _interrupt_told.append(True)
        error("interrupted")


def examples(*lines: str) -> str:
    """A command's help epilog: each line one example command, shown as written (no rewrapping)."""
    return EXAMPLES_HEADING + "\n" + "\n".join(f"  {line}" for line in lines)


_state: dict[str, int] = {"level": logging.WARNING}


def log_level(verbose: int = 0) -> int:
    """The log level for this call: ``-v`` is INFO, ``-vv`` DEBUG; without ``-v``, ``EDGECLS_LOG`` (debug, info,
    warning, error) if it is set, else WARNING. A bad ``EDGECLS_LOG`` is a usage error."""
    if verbose:
        return logging.INFO if verbose == 1 else logging.DEBUG
    value = os.environ.get(LOG_ENV, "").strip().lower()
    if not value:
        return logging.WARNING
    if value not in LEVELS:
        raise typer.BadParameter(f"{LOG_ENV}={value!r} is not one of {', '.join(LEVELS)}")
    return LEVELS[value]


def setup_logging(verbose: int = 0) -> int:
    """Send edgecls's log lines to stderr, one a line, at the level `log_level` gives; returns that level.

    One handler, writing to whatever sys.stderr is at the time (test runners and notebooks swap it); a second call
    in the same process replaces the first one's handler."""
    level = log_level(verbose)
    _state["level"] = level
    logger = logging.getLogger("edgecls")
    for old in [h for h in logger.handlers if getattr(h, "_edgecls_cli", False)]:
        logger.removeHandler(old)
    handler = _StderrHandler()
    handler.setFormatter(
        logging.Formatter(
            "%(levelname)s: %(message)s" if level > logging.DEBUG else "%(levelname)s %(name)s: %(message)s"
        )
    )
    handler._edgecls_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    return level


def verbose() -> bool:
    """Whether this call asked for more than warnings (``-v`` or ``EDGECLS_LOG=info|debug``)."""
    return _state["level"] < logging.WARNING


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A log handler that writes to the current sys.stderr (test runners and notebooks swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass
