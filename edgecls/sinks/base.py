"""Where stream results go: a JSON-lines file, an MQTT broker, an annotated video file, the live dashboard.

Every sink has ``write(result)`` and ``close()`` (which flushes), and is built from the text a user types after
``--sink`` by `parse_sink`: ``jsonl:PATH``, ``mqtt://[user:pass@]host[:port]/topic``, ``video:PATH``,
``preview:[HOST:]PORT``. A sink never stops classification: a broker that goes away is reconnected to in the
background while results wait in a bounded buffer.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar, Protocol

from edgecls.errors import ConfigError, EdgeclsError, SinkError
from edgecls.live.capture import StreamEvent
from edgecls.live.stream import StreamResult
from edgecls.sinks.dashboard import Dashboard as PreviewSink  # the preview: sink is the live dashboard
from edgecls.sinks.drawing import annotate
from edgecls.sinks.mqtt import MQTT_PASSWORD_ENV, MqttSink, mask_url, parse_mqtt_url, split_mqtt_password  # noqa: F401 (importable here too)

log = logging.getLogger(__name__)

SINK_FORMS = "jsonl:PATH, mqtt://[user:pass@]host[:port]/topic, video:PATH (.avi or .mp4), preview:[HOST:]PORT"


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


def _import_cv2_for(what: str) -> Any:
    try:
        import cv2
    except ImportError:
        raise SinkError(
            f"{what} draws and encodes frames with OpenCV, which is not installed: pip install 'edgecls[camera]'"
        ) from None
    return cv2


# -- the annotated video file (the live dashboard is edgecls.sinks.dashboard) ---------------------------------------------


class VideoSink:
    """The stream, annotated, written to a video file with OpenCV (``.avi``: MJPG, ``.mp4``: mp4v).

    Frames go to a ``.partial`` file renamed to ``path`` on close, so an interrupted run never leaves a
    half-written file under the final name.
    """

    FOURCC: ClassVar[dict[str, str]] = {".avi": "MJPG", ".mp4": "mp4v", ".mkv": "MJPG"}

    def __init__(self, path: str | os.PathLike[str], *, fps: float = 30.0) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in self.FOURCC:
            raise ConfigError(f"video sink {self.path}: the file must end in {', '.join(self.FOURCC)}")
        self.fps = fps
        self.partial = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.frames = 0
        self._writer: Any = None
        _import_cv2_for("the video sink")
        try:  # fail now, not after the first frame: the folder must exist (or be made) and be writable
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.partial, "wb"):
                pass
            os.unlink(self.partial)
        except OSError as exc:
            raise SinkError(
                f"cannot write the video {self.path} ({exc.strerror or exc}); check the folder and its permissions"
            ) from None

    def write(self, result: StreamResult) -> None:
        if result.frame is None:
            raise SinkError("the video sink needs the frames: make the stream with keep_frames=True")
        import cv2

        image = annotate(result)
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fourcc = cv2.VideoWriter_fourcc(*self.FOURCC[self.path.suffix.lower()])
            self._writer = cv2.VideoWriter(str(self.partial), fourcc, self.fps, (image.shape[1], image.shape[0]))
            if not self._writer.isOpened():
                self._writer = None
                raise SinkError(f"OpenCV cannot write {self.path}; try a .avi file")
            self._size = (image.shape[1], image.shape[0])
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size)
        self._writer.write(image)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            os.replace(self.partial, self.path)


def check_sink_spec(spec: str) -> str:
    """Check a ``--sink`` text without opening anything (``edgecls deploy`` checks the service's sinks this way);
    returns its kind: jsonl, mqtt, video or preview. Raises ConfigError naming the accepted forms."""
    shown = mask_url(spec)
    if has_control_chars(spec):
        raise ConfigError(f"sink {shown!r} holds control characters")
    if spec.startswith(("mqtt://", "mqtts://")):
        parse_mqtt_url(spec)
        return "mqtt"
    kind, _, rest = spec.partition(":")
    if kind == "jsonl" and rest:
        return kind
    if kind == "video" and rest:
        if not rest.lower().endswith(tuple(VideoSink.FOURCC)):
            raise ConfigError(f"video sink {rest}: the file must end in {', '.join(VideoSink.FOURCC)}")
        return kind
    if kind == "preview":
        _host, _, port = rest.rpartition(":")
        if not (port or "8080").isdigit() or not 0 <= int(port or 8080) < 65536:  # 0: any free port
            raise ConfigError(f"preview sink {spec!r}: the port must be a number, e.g. preview:8080")
        return kind
    raise ConfigError(f"unknown sink {shown!r}; expected {SINK_FORMS}")


def parse_sink(
    spec: str,
    *,
    on_change: bool = False,
    qos: int = 0,
    retain: bool = False,
    fps: float = 30.0,
    on_event: Callable[[StreamEvent], None] | None = None,
    discovery: Any = None,
    preview_token: str | None = None,
    preview_hosts: Iterable[str] = (),
    stats: Callable[[], Any] | None = None,
) -> Sink:
    """Build the sink a ``--sink`` text names (see SINK_FORMS); ``discovery`` (edgecls.sinks.hass.Discovery) goes to
    MQTT sinks, ``preview_token``, ``preview_hosts`` (more names it answers to) and ``stats`` (the stream's
    `Stream.stats`) to the dashboard."""
    kind = check_sink_spec(spec)
    rest = spec.partition(":")[2]
    if kind == "mqtt":
        return MqttSink(spec, on_change=on_change, qos=qos, retain=retain, on_event=on_event, discovery=discovery)
    if kind == "jsonl":
        return JsonlSink(rest, on_change=on_change)
    if kind == "video":
        return VideoSink(rest, fps=fps)
    host, _, port = rest.rpartition(":")
    return PreviewSink(
        int(port or 8080), host=host or "127.0.0.1", token=preview_token, hosts=preview_hosts, stats=stats
    )
