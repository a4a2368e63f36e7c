"""Where stream results go: a JSON-lines file, an MQTT broker, an annotated video file, the live dashboard.

Every sink has ``write(result)`` and ``close()`` (which flushes), and is built from the text a user types after
``--sink`` by `parse_sink`: ``jsonl:PATH``, ``mqtt://[user:pass@]host[:port]/topic``, ``video:PATH``,
``preview:[HOST:]PORT``. A sink never stops classification: a broker that goes away is reconnected to in the
background while results wait in a bounded buffer.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable, Protocol
from urllib.parse import unquote, urlsplit

from .capture import StreamEvent
from .dashboard import Dashboard as PreviewSink  # the preview: sink is the live dashboard
from .drawing import annotate
from .errors import ConfigError, EdgeclsError, SinkError
from .stream import StreamResult

log = logging.getLogger(__name__)

SINK_FORMS = "jsonl:PATH, mqtt://[user:pass@]host[:port]/topic, video:PATH (.avi or .mp4), preview:[HOST:]PORT"
# The MQTT password when the sink URL names a user without one (a deploy bundle's service reads it from a root-only
# EnvironmentFile, so it is neither in the unit nor in `ps`).
MQTT_PASSWORD_ENV = "EDGECLS_MQTT_PASSWORD"


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
            self._fh = open(self.path, "a", encoding="utf-8", buffering=1)  # line-buffered: one write per line
        except OSError as exc:
            raise SinkError(f"cannot open {self.path} for appending ({exc.strerror}); check the path and permissions") from None

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
                        self.on_event(StreamEvent("sink-error", f"{_name(sink)}: {self.first_error[i]}; the other "
                                                                "sinks and the stream go on", time.time()))

    def close(self) -> list[str]:
        """Close every sink; returns one line per sink that failed (writes or close), for a summary."""
        lines = []
        for i, sink in enumerate(self.sinks):
            try:
                sink.close()
            except (EdgeclsError, OSError, ValueError) as exc:
                self.first_error.setdefault(i, _describe(exc))
                self.failures[i] = self.failures.get(i, 0)
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


# -- MQTT ------------------------------------------------------------------------------------------------------------


class MqttSink:
    """Publish results as JSON to an MQTT topic through paho-mqtt.

    ``on_change``: publish only when the decided label changes. ``qos``/``retain``: as MQTT defines them.
    ``buffer``: results kept while the broker is unreachable or slow (the oldest go first when it is full, and are
    counted in `dropped`); they are sent, in order, as the broker accepts them. At most ``window`` messages are
    handed to paho at a time, so its own queue never overflows. The client retries the broker every
    ``reconnect_s`` seconds at most; ``<topic>/status`` holds a retained "online", and "offline" as the last will.
    ``on_event`` hears of disconnects, reconnects and refusals (each refusal reason once). ``discovery``
    (edgecls.hass.Discovery) publishes Home Assistant MQTT discovery configs, retained, on every connection and
    whenever Home Assistant announces that it started.

    Counters: `sent` (published; for QoS 1 and 2, acknowledged by the broker), `dropped` (evicted from the full
    buffer), `lost` (QoS 0 messages that were on the wire when the connection broke), `unsent` (still waiting when
    the sink closed).
    """

    def __init__(
        self,
        url: str,
        *,
        on_change: bool = False,
        qos: int = 0,
        retain: bool = False,
        buffer: int = 1000,
        window: int = 100,
        reconnect_s: float = 1.0,
        client_id: str | None = None,
        keepalive: int = 30,
        on_event: Callable[[StreamEvent], None] | None = None,
        discovery: Any = None,
    ) -> None:
        if qos not in (0, 1, 2):
            raise ConfigError(f"MQTT QoS must be 0, 1 or 2 (received {qos})")
        if buffer < 1 or window < 1:
            raise ConfigError(f"MQTT buffer and window must be at least 1 (received {buffer}, {window})")
        self.host, self.port, self.topic, user, password, tls = parse_mqtt_url(url)
        if user and password is None:
            password = os.environ.get(MQTT_PASSWORD_ENV) or None
        self.url = mask_url(url)  # for messages: never the password
        self.on_change, self.qos, self.retain, self.window = on_change, qos, retain, window
        self.on_event = on_event
        self.discovery = discovery
        self.sent = self.dropped = self.lost = self.unsent = 0
        self.last_error: str | None = None
        self._pending: collections.deque[bytes] = collections.deque()
        self._buffer = buffer
        self._inflight: collections.deque[tuple[Any, bytes]] = collections.deque()
        self._cond = threading.Condition()
        self._connected = False
        self._ever_connected = False
        self._closing = False
        mqtt = _import_paho()
        self._ok, self._no_conn = mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN
        self._client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"edgecls-{os.getpid()}-{int(time.time() * 1000) % 100000}",
        )
        if user:
            self._client.username_pw_set(user, password)
        if tls:
            self._client.tls_set()
        self._client.will_set(self.status_topic, "offline", qos=1, retain=True)
        # paho doubles the delay from min to max; a short max makes the reconnect follow the broker within reconnect_s
        self._client.reconnect_delay_set(min_delay=min(0.25, reconnect_s), max_delay=reconnect_s)  # type: ignore[arg-type]
        self._client.connect_timeout = 3.0
        self._client.max_queued_messages_set(0)  # unbounded in paho: our window bounds what it holds
        self._client.max_inflight_messages_set(window)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        try:
            self._client.connect_async(self.host, self.port, keepalive)
        except (OSError, ValueError) as exc:
            raise SinkError(f"cannot connect to MQTT broker {self.host}:{self.port} ({exc})") from None
        self._client.loop_start()  # its thread connects, and reconnects after every loss
        self._sender = threading.Thread(target=self._send_loop, name="edgecls-mqtt-send", daemon=True)
        self._sender.start()

    @property
    def status_topic(self) -> str:
        return f"{self.topic}/status"

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def pending(self) -> int:
        """Results not yet accepted by the broker (buffered or in flight)."""
        with self._cond:
            return len(self._pending) + len(self._inflight)

    @property
    def overflowed(self) -> int:  # the name before `dropped`
        return self.dropped

    def write(self, result: StreamResult) -> None:
        if self.on_change and not result.decision.changed:
            return
        payload = json.dumps(result.to_dict()).encode()
        with self._cond:
            if len(self._pending) >= self._buffer:
                self._pending.popleft()
                self.dropped += 1
            self._pending.append(payload)
            self._cond.notify_all()

    def wait_connected(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the broker connection (results are buffered meanwhile either way)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._connected and self.last_error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._connected

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until everything buffered has been accepted; True when it was."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
                self._retire_locked()
            return True

    def close(self, timeout: float = 2.0) -> None:
        """Send what is buffered (up to ``timeout`` s while the broker is connected; a broker that is down gets
        0.2 s to come back), publish "offline", then disconnect. Returns within about ``timeout`` + 0.5 s, and
        within half a second when the broker is down."""
        if self._closing:
            return
        self.flush(timeout if self._connected else min(timeout, 0.2))
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            self.unsent = len(self._pending) + len(self._inflight)
            connected = self._connected
        self._sender.join(0.2)
        if connected:
            try:
                self._client.publish(self.status_topic, "offline", qos=1, retain=True).wait_for_publish(0.3)
            except (RuntimeError, ValueError):
                pass
        if self.unsent or self.dropped or self.lost:
            log.warning("MQTT %s:%d: %d result(s) sent, %d not sent (%d dropped from the full buffer, %d lost in a "
                        "disconnect, %d still waiting at the stop)", self.host, self.port, self.sent,
                        self.dropped + self.lost + self.unsent, self.dropped, self.lost, self.unsent)
        self._client.disconnect()
        # loop_stop joins paho's thread, which may sit in a reconnect wait or a connect timeout: bound the wait
        stopper = threading.Thread(target=self._client.loop_stop, daemon=True)
        stopper.start()
        stopper.join(0.3 if connected else 0.05)  # paho's thread is a daemon: one in a reconnect wait ends by itself

    # -- the sender thread: hands buffered results to paho while connected, at most `window` in flight ----------

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                while not self._closing and not (
                    self._connected and self._pending and len(self._inflight) < self.window
                ):
                    self._cond.wait(0.05)
                    self._retire_locked()
                if self._closing:
                    return
                payload = self._pending.popleft()
            try:
                info = self._client.publish(self.topic, payload, qos=self.qos, retain=self.retain)
            except (ValueError, RuntimeError) as exc:  # cannot happen for a valid topic; never kill the thread
                self._event("sink-error", f"MQTT publish failed: {exc}")
                continue
            with self._cond:
                if info.rc == self._no_conn and self.qos == 0:  # the connection dropped under us: keep it
                    self._pending.appendleft(payload)
                    self._connected = False
                else:  # sent, or (QoS 1/2) queued in paho, which sends it again after a reconnect
                    self._inflight.append((info, payload))
                self._retire_locked()

    def _retire_locked(self) -> None:
        changed = False
        # paho marks a message published when it has left (QoS 0) or is acknowledged (QoS 1, 2); is_published()
        # raises for a QoS 1 message first queued without a connection, which paho still delivers later
        while self._inflight and getattr(self._inflight[0][0], "_published", True):
            info, _ = self._inflight.popleft()
            if self.qos > 0 or info.rc == self._ok:
                self.sent += 1
            else:  # QoS 0 that was on the wire when the connection broke
                self.lost += 1
            changed = True
        if changed:
            self._cond.notify_all()

    # -- paho callbacks (its network thread; never call paho while holding our lock) -------------------------

    def _on_publish(self, client: Any, userdata: Any, mid: Any, reason_code: Any, properties: Any) -> None:
        with self._cond:
            self._cond.notify_all()  # the sender retires what is published

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            reason = f"MQTT broker {self.host}:{self.port} refused the connection: {reason_code}"
            with self._cond:
                first = reason != self.last_error
                self.last_error = reason
                self._cond.notify_all()
            if first:
                self._event("sink-error", reason + " (check the user and password)")
            return
        client.publish(self.status_topic, "online", qos=1, retain=True)
        if self.discovery is not None:
            from .hass import birth_topic

            self._publish_discovery(client)
            client.subscribe(birth_topic(self.discovery), qos=1)
        with self._cond:
            self._connected = True
            self.last_error = None
            self._cond.notify_all()
        kind = "sink-reconnected" if self._ever_connected else "sink-connected"
        self._ever_connected = True
        self._event(kind, f"MQTT connected to {self.host}:{self.port}")

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        # Home Assistant said "online" on its birth topic (it started again): it wants the configs once more
        if self.discovery is not None and message.payload == b"online":
            self._publish_discovery(client)

    def _publish_discovery(self, client: Any) -> None:
        from .hass import discovery_messages

        for topic, payload in discovery_messages(self.discovery, self.topic, self.status_topic):
            client.publish(topic, payload, qos=1, retain=True)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        with self._cond:
            was = self._connected
            self._connected = False
        if was and not self._closing:
            self._event("sink-disconnected", f"MQTT lost {self.host}:{self.port} ({reason_code}); reconnecting")

    def _event(self, kind: str, message: str) -> None:
        log.info("%s: %s", kind, message)
        if self.on_event is not None:
            self.on_event(StreamEvent(kind, message, time.time()))


def parse_mqtt_url(url: str) -> tuple[str, int, str, str | None, str | None, bool]:
    """(host, port, topic, user, password, tls) of ``mqtt[s]://[user[:pass]@]host[:port]/topic``.

    Error messages show the URL with its password masked (``mqtt://pi:***@host/t``)."""
    shown = mask_url(url)
    if has_control_chars(url):
        raise ConfigError(f"MQTT sink {shown!r} holds control characters")
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(f"MQTT sink {shown!r} must start with mqtt:// or mqtts://")
    topic = unquote(parts.path.lstrip("/"))
    if not parts.hostname or not topic:
        raise ConfigError(f"MQTT sink {shown!r} needs a host and a topic: mqtt://[user:pass@]host[:port]/topic")
    if "#" in topic or "+" in topic or parts.fragment or url.endswith("#"):
        raise ConfigError(f"MQTT topic {topic!r} is for publishing and cannot hold the wildcards # or +")
    try:
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError:
        raise ConfigError(f"MQTT sink {shown!r} has an invalid port") from None
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return parts.hostname, port, topic, user, password, parts.scheme == "mqtts"


def _without_password(url: str, replacement: str | None) -> tuple[str, str | None]:
    """(``url`` with the password of its ``user:password@`` part replaced by ``replacement``, or dropped with its
    colon when that is None; the password as written, or None when the URL has none)."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url, None
    user, password = userinfo.split(":", 1)
    kept = f"{user}:{replacement}" if replacement is not None else user
    return f"{scheme}://{kept}@{host}{slash}{path}", password


def mask_url(url: str) -> str:
    """``url`` with the password of its ``user:password@`` part replaced by ``***``."""
    return _without_password(url, "***")[0]


def split_mqtt_password(url: str) -> tuple[str, str | None]:
    """(the URL without its password, the password or None): what a service unit may show, and the secret."""
    parse_mqtt_url(url)  # raises on a malformed URL, with the password masked
    public, password = _without_password(url, None)
    return public, unquote(password) if password is not None else None


def has_control_chars(text: str) -> bool:
    """True when ``text`` holds a control character (a newline among them): such values never reach a unit file,
    a script or a message."""
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def _import_cv2_for(what: str) -> Any:
    try:
        import cv2
    except ImportError:
        raise SinkError(f"{what} draws and encodes frames with OpenCV, which is not installed: "
                        "pip install 'edgecls[camera]'") from None
    return cv2


def _import_paho() -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise SinkError("the MQTT sink needs paho-mqtt: pip install 'edgecls[mqtt]'") from None
    return mqtt


# -- the annotated video file (the live dashboard is edgecls.dashboard) ---------------------------------------------


class VideoSink:
    """The stream, annotated, written to a video file with OpenCV (``.avi``: MJPG, ``.mp4``: mp4v).

    Frames go to a ``.partial`` file renamed to ``path`` on close, so an interrupted run never leaves a
    half-written file under the final name.
    """

    FOURCC = {".avi": "MJPG", ".mp4": "mp4v", ".mkv": "MJPG"}

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
            raise SinkError(f"cannot write the video {self.path} ({exc.strerror or exc}); check the folder and its "
                            "permissions") from None

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
        host, _, port = rest.rpartition(":")
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
    """Build the sink a ``--sink`` text names (see SINK_FORMS); ``discovery`` (edgecls.hass.Discovery) goes to
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
    return PreviewSink(int(port or 8080), host=host or "127.0.0.1", token=preview_token, hosts=preview_hosts,
                       stats=stats)
