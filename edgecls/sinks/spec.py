"""From the text a user types after ``--sink`` to a sink: one registry, `register_sink`, and `parse_sink` as the single
way in (like the converter's model registry).

Each kind of sink registers how a ``--sink`` text names it (its schemes: ``jsonl``, ``mqtt``/``mqtts``, ``video``,
``preview``), a check that needs nothing opened (``edgecls deploy`` checks a service's sinks this way), and a builder.
What a sink can be told beyond its text comes in one `SinkOptions`, a frozen group of each kind's options; the
stream's callbacks (``on_event``, ``stats``) are passed beside it, since they are not configuration.

>>> parse_sink("jsonl:results.jsonl", SinkOptions(on_change=True))  # doctest: +SKIP
<edgecls.sinks.base.JsonlSink object at ...>
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from edgecls.errors import ConfigError
from edgecls.live.capture import StreamEvent
from edgecls.sinks.base import JsonlSink, Sink, has_control_chars
from edgecls.sinks.mqtt import mask_url, parse_mqtt_url
from edgecls.sinks.video import check_video_path

# -- the options each kind of sink takes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MqttSinkOptions:
    """``qos``: MQTT quality of service (0, 1 or 2); ``retain``: publish results as retained; ``discovery``: an
    `edgecls.sinks.hass.Discovery` to announce the camera to Home Assistant (None: no announcement)."""

    qos: int = 0
    retain: bool = False
    discovery: Any = None

    def __post_init__(self) -> None:
        if self.qos not in (0, 1, 2) or isinstance(self.qos, bool):
            raise ConfigError(f"MQTT QoS must be 0, 1 or 2 (received {self.qos!r})")


@dataclass(frozen=True)
class PreviewSinkOptions:
    """``token``: what the dashboard asks for when it listens beyond 127.0.0.1; ``hosts``: more names it answers to
    (Host header)."""

    token: str | None = None
    hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.hosts, str):
            raise ConfigError(f"preview hosts must be a list of names, not one text (received {self.hosts!r})")
        object.__setattr__(self, "hosts", tuple(self.hosts))


@dataclass(frozen=True)
class VideoSinkOptions:
    """``fps``: the frame rate written into the video file (the stream's rate, for playback at the right speed)."""

    fps: float = 30.0

    def __post_init__(self) -> None:
        if not self.fps > 0:
            raise ConfigError(f"video sink fps must be positive (received {self.fps!r})")


@dataclass(frozen=True)
class SinkOptions:
    """Everything a ``--sink`` text does not say, for every kind at once: ``on_change`` (write only results whose
    decision changed: JSON lines and MQTT), and each kind's own options."""

    on_change: bool = False
    mqtt: MqttSinkOptions = field(default_factory=MqttSinkOptions)
    preview: PreviewSinkOptions = field(default_factory=PreviewSinkOptions)
    video: VideoSinkOptions = field(default_factory=VideoSinkOptions)


# -- the registry ---------------------------------------------------------------------------------------------------

Build = Callable[..., Sink]  # build(spec, options, *, on_event, stats) -> Sink


@dataclass(frozen=True)
class SinkKind:
    """One entry of the registry: the ``--sink`` schemes that name it (the text before the first ``:``), the form
    shown in help and errors, a check of the text that opens nothing (raises ConfigError), the builder, and whether
    the sink draws on frames (the stream then keeps each frame with its result)."""

    kind: str
    schemes: tuple[str, ...]
    form: str
    check: Callable[[str], None]
    build: Build
    needs_frames: bool = False


SINKS: dict[str, SinkKind] = {}


def register_sink(
    kind: str,
    *,
    form: str,
    check: Callable[[str], None] | None = None,
    schemes: Iterable[str] | None = None,
    needs_frames: bool = False,
) -> Callable[[Build], Build]:
    """Add a kind of sink: decorates its builder, ``build(spec, options, *, on_event, stats) -> Sink``.

    ``schemes``: the texts before the first ``:`` that name it (default: ``kind``); ``check(spec)`` raises
    ConfigError for a text the builder would refuse, without opening anything."""

    def wrap(build: Build) -> Build:
        names = tuple(schemes or (kind,))
        taken = [s for s in names for other in SINKS.values() if other.kind != kind and s in other.schemes]
        if taken:
            raise ConfigError(f"sink scheme {taken[0]!r} is taken already; register {kind!r} under another")
        SINKS[kind] = SinkKind(kind, names, form, check or (lambda spec: None), build, needs_frames)
        return build

    return wrap


def sink_forms() -> str:
    """The accepted ``--sink`` forms, from the registry (for help texts and errors)."""
    return ", ".join(entry.form for entry in SINKS.values())


def sink_kind(spec: str) -> SinkKind:
    """The registry entry a ``--sink`` text names; ConfigError naming the accepted forms when there is none."""
    scheme = spec.partition(":")[0]
    for entry in SINKS.values():
        if scheme in entry.schemes:
            return entry
    raise ConfigError(f"unknown sink {mask_url(spec)!r}; expected {sink_forms()}")


def check_sink_spec(spec: str) -> str:
    """Check a ``--sink`` text without opening anything (``edgecls deploy`` checks the service's sinks this way);
    returns its kind (jsonl, mqtt, video, preview, or a kind registered since). Raises ConfigError naming the
    accepted forms; a password in the text never appears in the message."""
    if has_control_chars(spec):
        raise ConfigError(f"sink {mask_url(spec)!r} holds control characters")
    entry = sink_kind(spec)
    entry.check(spec)
    return entry.kind


def sink_needs_frames(spec: str) -> bool:
    """Whether the sink a ``--sink`` text names draws on the frames (the video file, the dashboard)."""
    return sink_kind(spec).needs_frames


def parse_sink(
    spec: str,
    options: SinkOptions | None = None,
    *,
    on_event: Callable[[StreamEvent], None] | None = None,
    stats: Callable[[], Any] | None = None,
) -> Sink:
    """Build the sink a ``--sink`` text names (see `sink_forms`), told ``options``; ``on_event`` hears of its
    connection's losses and recoveries (MQTT), ``stats`` (the stream's `Stream.stats`) feeds the dashboard."""
    entry = SINKS[check_sink_spec(spec)]
    return entry.build(spec, options or SinkOptions(), on_event=on_event, stats=stats)


# -- the built-in sinks ---------------------------------------------------------------------------------------------


def _rest(spec: str) -> str:
    return spec.partition(":")[2]


def _check_path(spec: str) -> None:
    if not _rest(spec):
        raise ConfigError(f"sink {spec!r} names no file; expected {spec.partition(':')[0]}:PATH")


@register_sink("jsonl", form="jsonl:PATH", check=_check_path)
def _jsonl(spec: str, options: SinkOptions, **_: Any) -> Sink:
    return JsonlSink(_rest(spec), on_change=options.on_change)


def _check_mqtt(spec: str) -> None:
    if not spec.startswith(("mqtt://", "mqtts://")):
        raise ConfigError(f"MQTT sink {mask_url(spec)!r}: expected mqtt://[user:pass@]host[:port]/topic")
    parse_mqtt_url(spec)


@register_sink("mqtt", form="mqtt://[user:pass@]host[:port]/topic", check=_check_mqtt, schemes=("mqtt", "mqtts"))
def _mqtt(spec: str, options: SinkOptions, *, on_event: Any = None, **_: Any) -> Sink:
    from edgecls.sinks.mqtt import MqttSink

    mqtt = options.mqtt
    return MqttSink(
        spec,
        on_change=options.on_change,
        qos=mqtt.qos,
        retain=mqtt.retain,
        on_event=on_event,
        discovery=mqtt.discovery,
    )


def _check_video(spec: str) -> None:
    _check_path(spec)
    check_video_path(_rest(spec))


@register_sink("video", form="video:PATH (.avi or .mp4)", check=_check_video, needs_frames=True)
def _video(spec: str, options: SinkOptions, **_: Any) -> Sink:
    from edgecls.sinks.video import VideoSink

    return VideoSink(_rest(spec), fps=options.video.fps)


def _preview_address(spec: str) -> tuple[str, int]:
    host, _, port = _rest(spec).rpartition(":")
    if not (port or "8080").isdigit() or not 0 <= int(port or 8080) < 65536:  # 0: any free port
        raise ConfigError(f"preview sink {spec!r}: the port must be a number, e.g. preview:8080")
    return host or "127.0.0.1", int(port or 8080)


@register_sink("preview", form="preview:[HOST:]PORT", check=_preview_address, needs_frames=True)
def _preview(spec: str, options: SinkOptions, *, stats: Any = None, **_: Any) -> Sink:
    from edgecls.sinks.dashboard import Dashboard  # the preview: sink is the live dashboard

    host, port = _preview_address(spec)
    preview = options.preview
    return Dashboard(port, host=host, token=preview.token, hosts=preview.hosts, stats=stats)


# Built from the registry above; a kind registered later shows in `sink_forms()`.
SINK_FORMS = sink_forms()
