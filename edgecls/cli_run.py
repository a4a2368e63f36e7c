"""The CLI side of `edgecls run`: builds the stream and its sinks, shows live results, and stops on SIGINT/SIGTERM.

This is command-line code (it writes to the terminal and installs signal handlers); the library it drives,
`edgecls.stream.Stream`, does neither.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .capture import StreamEvent
from .classifier import Classifier
from .collect import Collector
from .sinks import MqttSink, PreviewSink, Sink, SinkGroup, TextSink, format_line, parse_sink
from .smoothing import Smoothing
from .stream import Stream, StreamStats

LIVE_REFRESH_S = 0.1


@dataclass
class RunOptions:
    source: str
    top_k: int = 3
    threshold: float = 0.0
    sinks: list[str] = field(default_factory=list)
    json_lines: bool = False
    quiet: bool = False
    on_change: bool = False
    fps: float | None = None
    max_frames: int | None = None
    duration: float | None = None
    loop: bool = False
    ema: float = 1.0
    hold: int = 1
    margin: float | None = None
    min_score: float = 0.0
    width: int | None = None
    height: int | None = None
    camera_fps: float | None = None
    picamera: dict[str, Any] | None = None
    mqtt_qos: int = 0
    mqtt_retain: bool = False
    mqtt_discovery: str | None = None  # Home Assistant MQTT discovery under this prefix (edgecls.hass)
    collect: str | None = None  # keep the frames worth a look here (edgecls.collect)
    preview_token: str | None = None  # the dashboard's token, needed when it listens beyond 127.0.0.1
    collect_policy: Any = None  # edgecls.collect.CollectPolicy
    stats_every: float | None = None


def run_stream(clf: Classifier, options: RunOptions, *, out: TextIO, err: TextIO) -> int:
    """Run until the source ends, a limit is reached or a signal arrives; returns the exit code."""
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            err.write(line + "\n")
            err.flush()

    def on_event(event: StreamEvent) -> None:
        say(f"{event.kind}: {event.message}")

    smoothing = Smoothing(alpha=options.ema, hold=options.hold, margin=options.margin, min_score=options.min_score)
    stream = Stream(
        clf, source=options.source, top_k=options.top_k, threshold=options.threshold, smoothing=smoothing,
        fps=options.fps, max_frames=options.max_frames, duration=options.duration, loop=options.loop,
        on_event=on_event,
        keep_frames=options.collect is not None or any(s.startswith(("video:", "preview")) for s in options.sinks),
        source_options={
            "width": options.width, "height": options.height, "fps": options.camera_fps, "picamera": options.picamera
        },
    )
    sinks: list[Sink] = []
    group = SinkGroup([], on_event)
    try:
        sinks = _make_sinks(options, on_event, say, model_name=Path(str(clf.path)).name, stats=stream.stats)
        if not options.quiet:
            sinks.insert(0, _stdout_sink(out, options, stream))
        if options.stats_every:
            sinks.append(_StatsLines(stream, options.stats_every, say))
        group.sinks = sinks
        stopped_by = _run(stream, group, say)
    finally:
        stream.close()
        failed = group.close()
        clf.close()
    stats = stream.stats()
    say(_summary(stats, stopped_by))
    for sink in sinks:
        if isinstance(sink, Collector):
            say(sink.summary())
    for line in failed:
        say(f"error: {line}")
    if stats.frames_skipped:
        say(f"error: {stats.frames_skipped} item(s) of the source could not be read (each named above)")
    if stream.error is not None:
        say(f"error: {stream.error}")
    return 1 if failed or stats.frames_skipped or stream.error is not None else 0


def _make_sinks(options: RunOptions, on_event: Any, say: Any, model_name: str | None = None,
                stats: Any = None) -> list[Sink]:
    sinks: list[Sink] = []
    discovery = None
    if options.mqtt_discovery is not None:
        from .hass import Discovery, require_mqtt_sink

        discovery = Discovery(prefix=options.mqtt_discovery, model=model_name)
        require_mqtt_sink(options.sinks)
    try:
        for spec in options.sinks:
            sink = parse_sink(
                spec, on_change=options.on_change, qos=options.mqtt_qos, retain=options.mqtt_retain,
                fps=options.fps or 30.0, on_event=on_event, discovery=discovery,
                preview_token=options.preview_token, stats=stats,
            )
            sinks.append(sink)
            if isinstance(sink, MqttSink) and not sink.wait_connected(2.0):
                why = f" ({sink.last_error})" if sink.last_error else ""
                say(f"warning: MQTT broker {sink.host}:{sink.port} is not reachable yet{why}; results are buffered "
                    "and sent when it is")
            if isinstance(sink, PreviewSink):
                say(sink.announce())
        if options.collect is not None:
            sinks.append(Collector(options.collect, options.collect_policy, model=model_name))
    except BaseException:
        for s in sinks:
            s.close()
        raise
    return sinks


def _run(stream: Stream, sinks: SinkGroup, say: Any) -> str | None:
    """Iterate the stream into the sinks; returns the name of the signal that stopped it, if one did."""
    stopped_by: list[str] = []

    def handler(signum: int, frame: Any) -> None:
        stopped_by.append(signal.Signals(signum).name)
        stream.stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stream.start()
        for result in stream:
            sinks.write(result)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    return stopped_by[0] if stopped_by else None


class _StatsLines:
    """A JSON line of live statistics on stderr every ``every`` seconds (fps, drops, latency percentiles)."""

    def __init__(self, stream: Stream, every: float, say: Any) -> None:
        self.stream, self.every, self.say = stream, every, say
        self._next = time.monotonic() + every

    def write(self, result: Any) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.every
            self.say("stats: " + json.dumps(self.stream.stats().to_dict()))

    def close(self) -> None:
        pass


class _LiveLine:
    """One line on a terminal, rewritten at most 10 times a second, with the live fps, drops and latency; a changed
    decision leaves its line behind."""

    def __init__(self, out: TextIO, on_change: bool, stream: Stream) -> None:
        self.out, self.on_change, self.stream = out, on_change, stream
        self._last = 0.0
        self._width = 0

    def write(self, result: Any) -> None:
        changed = result.decision.changed
        if self.on_change and not changed:
            return
        now = time.monotonic()
        if not changed and now - self._last < LIVE_REFRESH_S:
            return
        self._last = now
        stats = self.stream.stats()
        total = stats.latency_ms.get("total", {})
        line = (f"{format_line(result)}  {stats.fps:.1f} fps, {stats.frames_dropped} dropped, "
                f"p50 {total.get('p50', 0):.1f} ms")
        pad = " " * max(0, self._width - len(line))
        self._width = len(line)
        self.out.write("\r" + line + pad + ("\n" if changed else ""))
        if changed:
            self._width = 0
        self.out.flush()

    def close(self) -> None:
        self.out.write("\n")
        self.out.flush()


def _stdout_sink(out: TextIO, options: RunOptions, stream: Stream) -> Sink:
    if not options.json_lines and out.isatty():
        return _LiveLine(out, options.on_change, stream)
    return TextSink(out, json_lines=options.json_lines, on_change=options.on_change)


def _summary(stats: StreamStats, stopped_by: str | None) -> str:
    lat = stats.latency_ms
    parts = [
        f"{stats.frames_processed} frames in {stats.elapsed_s:.1f} s",
        f"{stats.frames_processed / stats.elapsed_s:.1f} fps" if stats.elapsed_s > 0 else "",
        f"{stats.frames_dropped} dropped",
    ]
    if lat:
        parts.append(
            "latency p50/p95 ms: "
            + ", ".join(f"{name.replace('_', '-')} {v['p50']:.1f}/{v['p95']:.1f}" for name, v in lat.items())
        )
    if stats.frames_skipped:
        parts.append(f"{stats.frames_skipped} skipped")
    if stats.reconnects:
        parts.append(f"{stats.reconnects} reconnects")
    if stopped_by:
        parts.append(f"stopped by {stopped_by}")
    return "done: " + "; ".join(p for p in parts if p)
