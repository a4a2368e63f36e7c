"""What every sink is: ``write(result)`` and ``close()`` (which flushes); the text and JSON-lines sinks; and
`SinkGroup`, which feeds several sinks so that one failing never stops the others or the stream.

The other sinks live in their own modules (`edgecls.sinks.mqtt`, `edgecls.sinks.video`, `edgecls.sinks.dashboard`,
`edgecls.sinks.collect`); `edgecls.sinks.spec` builds one from the text a user types after ``--sink``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from edgecls.errors import EdgeclsError, SinkError
from edgecls.live.capture import StreamEvent
from edgecls.live.stream import StreamResult

log = logging.getLogger(__name__)


class Sink(Protocol):
    def write(self, result: StreamResult) -> None: ...

    def close(self) -> None: ...


def format_line(result: StreamResult) -> str:
    """A readable one-line summary of a result: top-k, the smoothed decision and the latency."""
    top = "  ".join(f"{p.label} {p.score:.2f}" for p in result.predictions) or "(nothing above threshold)"
    d = result.decision
    decided = f"{d.label} {d.score:.2f}" if d.label is not None else "none"
    mark = " *changed*" if d.changed else ""
    return f"#{result.sequence:<6d} {top}  | decision: {decided}{mark}  [{result.latency.total_ms:.1f} ms]"


class TextSink:
    """Results as readable lines (or JSON objects with ``json=True``) on a text stream such as sys.stdout."""

    def __init__(self, stream: Any, *, json_lines: bool = False, on_change: bool = False) -> None:
        self.stream, self.json_lines, self.on_change = stream, json_lines, on_change

    def write(self, result: StreamResult) -> None:
        if self.on_change and not result.decision.changed:
            return
        text = json.dumps(result.to_dict()) if self.json_lines else format_line(result)
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class JsonlSink:
    """One JSON object per result appended to ``path`` and flushed per line: a crash loses at most the line in
    flight, never an earlier one."""

    def __init__(self, path: str | os.PathLike[str], *, on_change: bool = False) -> None:
        self.path = Path(path)
        self.on_change = on_change
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # line-buffered: one write per line; the sink holds the file until close()
            self._fh = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        except OSError as exc:
            raise SinkError(
                f"cannot open {self.path} for appending ({exc.strerror}); check the path and permissions"
            ) from None

    def write(self, result: StreamResult) -> None:
        if self.on_change and not result.decision.changed:
            return
        try:
            self._fh.write(json.dumps(result.to_dict()) + "\n")
        except OSError as exc:
            raise SinkError(f"writing {self.path} failed ({exc.strerror}); is the disk full?") from None

    def close(self) -> None:
        if not self._fh.closed:
            try:
                self._fh.close()
            except OSError as exc:
                raise SinkError(f"writing {self.path} failed ({exc.strerror}); is the disk full?") from None


class SinkGroup:
    """Several sinks fed the same results, where one that fails (a full disk, a closed pipe) never stops the others
    or the stream: its first failure is reported through ``on_event`` (kind ``sink-error``), every failed write is
    counted in `failures`, and it is tried again with the next result (a disk that was full may have room again)."""

    def __init__(self, sinks: list[Sink], on_event: Callable[[StreamEvent], None] | None = None) -> None:
        self.sinks = list(sinks)
        self.on_event = on_event
        self.failures: dict[int, int] = {}  # index in sinks -> failed writes
        self.first_error: dict[int, str] = {}

    def write(self, result: StreamResult) -> None:
        for i, sink in enumerate(self.sinks):
            try:
                sink.write(result)
            except (EdgeclsError, OSError, ValueError) as exc:
                self.failures[i] = self.failures.get(i, 0) + 1
                if i not in self.first_error:
                    self.first_error[i] = _describe(exc)
                    if self.on_event is not None:
                        self.on_event(
                            StreamEvent(
                                "sink-error",
                                f"{_name(sink)}: {self.first_error[i]}; the other sinks and the stream go on",
                                time.time(),
                            )
                        )

    def close(self) -> list[str]:
        """Close every sink; returns one line per sink that failed (writes or close), for a summary. A sink whose
        writes all went through but whose close failed (an MQTT sink that delivered nothing) gets its own words."""
        lines = []
        for i, sink in enumerate(self.sinks):
            try:
                sink.close()
            except (EdgeclsError, OSError, ValueError) as exc:
                if i not in self.first_error:
                    lines.append(f"{_name(sink)}: {_describe(exc)}")
                    continue
            if i in self.first_error:
                lines.append(f"{_name(sink)}: {self.failures.get(i, 0)} result(s) not written ({self.first_error[i]})")
        return lines


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _name(sink: Any) -> str:
    for attr in ("url", "path"):
        if getattr(sink, attr, None) is not None:
            return f"sink {getattr(sink, attr)}"
    return f"sink {type(sink).__name__}"


def has_control_chars(text: str) -> bool:
    """True when ``text`` holds a control character (a newline among them): such values never reach a unit file,
    a script or a message."""
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


# Names that lived here before the sinks had a module each: still importable from here, loaded on first use.
_MOVED = {
    "VideoSink": ("edgecls.sinks.video", "VideoSink"),
    "PreviewSink": ("edgecls.sinks.dashboard", "Dashboard"),
    "MqttSink": ("edgecls.sinks.mqtt", "MqttSink"),
    "MQTT_PASSWORD_ENV": ("edgecls.sinks.mqtt", "MQTT_PASSWORD_ENV"),
    "mask_url": ("edgecls.sinks.mqtt", "mask_url"),
    "parse_mqtt_url": ("edgecls.sinks.mqtt", "parse_mqtt_url"),
    "split_mqtt_password": ("edgecls.sinks.mqtt", "split_mqtt_password"),
    "SINK_FORMS": ("edgecls.sinks.spec", "SINK_FORMS"),
    "check_sink_spec": ("edgecls.sinks.spec", "check_sink_spec"),
    "parse_sink": ("edgecls.sinks.spec", "parse_sink"),
}


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    module, attr = _MOVED[name]
    return getattr(importlib.import_module(module), attr)
