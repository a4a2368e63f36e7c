"""The CLI side of `edgecls run`: builds the stream and its sinks, shows live results, and stops cleanly on SIGINT,
SIGTERM or SIGHUP, or when the reader of its stdout goes away.

This is command-line code (it writes to the terminal and installs signal handlers); the library it drives,
`edgecls.live.stream.Stream`, does neither.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from edgecls.errors import ConfigError, EdgeclsError
from edgecls.live.capture import StreamEvent
from edgecls.live.imx500 import SensorClassifier, is_imx500_source
from edgecls.live.stream import Stream, StreamConfig, StreamStats
from edgecls.model.classifier import Classifier, ClassifierConfig
from edgecls.nativelog import quiet_native_stderr
from edgecls.sinks.base import Sink, SinkGroup, TextSink, format_line
from edgecls.sinks.collect import Collector
from edgecls.sinks.dashboard import Dashboard
from edgecls.sinks.mqtt import MqttSink
from edgecls.sinks.spec import SinkOptions, parse_sink

LIVE_REFRESH_S = 0.1
# What stops a run cleanly (the stream stopped, every sink flushed and closed, the summary on stderr, exit code 0):
# Ctrl-C, a service stop, the hang-up of a terminal or an SSH logout; and a closed stdout (`| head -1`).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
CLOSED_STDOUT = "a closed stdout"


@dataclass(frozen=True)
class OutputOptions:
    """Where `edgecls run` sends its results besides the stream itself: the ``--sink`` texts, stdout (``json_lines``,
    or nothing when ``quiet``), a statistics line every ``stats_every`` seconds, the frames worth a look kept in
    ``collect`` (by ``collect_policy``, an `edgecls.sinks.collect.CollectPolicy`), and Home Assistant discovery under
    the prefix ``mqtt_discovery`` (None: off) for the device ``mqtt_discovery_node_id``."""

    sinks: tuple[str, ...] = ()
    json_lines: bool = False
    quiet: bool = False
    stats_every: float | None = None
    collect: str | None = None
    collect_policy: Any = None
    mqtt_discovery: str | None = None
    mqtt_discovery_node_id: str | None = None


def open_classifier(model: str | os.PathLike[str], config: StreamConfig) -> Classifier | SensorClassifier:
    """The classifier ``config`` asks for (the AI Camera's network with ``--source imx500``), with what native code
    prints while loading held back (edgecls.nativelog)."""
    if is_imx500_source(config.source.spec):  # the network runs on the sensor: nothing for the CPU to tune
        _refuse_cpu_options(config.classifier)
        return SensorClassifier.open(model, source=str(config.source.spec), labels=config.classifier.labels)
    with quiet_native_stderr():
        return Classifier.from_config(model, config.classifier)  # a CPU fallback is logged as a warning


def _refuse_cpu_options(config: ClassifierConfig) -> None:
    """--source imx500 with options for a TFLite interpreter: an error, not silently ignored."""
    given = {
        "--threads": config.num_threads,
        "--backend": config.backend,
        "--delegate": config.delegate,
        "--device": config.device,
        "--delegate-option": config.delegate_options,
        "--allow-cpu-fallback": config.allow_cpu_fallback,
    }
    named = [flag for flag, value in given.items() if value]
    if named:
        raise ConfigError(
            f"{', '.join(named)} set the TFLite interpreter on the CPU; with --source imx500 the network "
            "runs on the AI Camera's sensor: leave them out"
        )


def run_stream(
    clf: Classifier | SensorClassifier,
    config: StreamConfig,
    sink_options: SinkOptions,
    output: OutputOptions,
    *,
    out: TextIO,
    err: TextIO,
) -> int:
    """Run until the source ends, a limit is reached or a signal arrives; returns the exit code."""
    lock = threading.Lock()

    def say(line: str) -> None:
        if err is None:  # started with stderr closed (2>&-): Python has no sys.stderr, no one to tell
            return
        with lock:
            try:
                err.write(line + "\n")
                err.flush()
            except (OSError, ValueError):  # stderr went away (a hung-up terminal, a closed pipe): no one to tell
                _to_devnull(err)

    def on_event(event: StreamEvent) -> None:
        say(f"{event.kind}: {event.message}")

    stream = Stream.from_config(clf, config, on_event=on_event)
    sinks: list[Sink] = []
    group = SinkGroup([], on_event)
    stopped: list[str] = []  # what stopped the run: a signal's name, or CLOSED_STDOUT

    def stop(why: str) -> None:
        stopped.append(why)
        stream.stop()

    with _stop_signals(stop):  # until every sink is closed: a second Ctrl-C must not cut the closing short
        try:
            sinks = _make_sinks(
                output, sink_options, on_event, say, model_name=Path(str(clf.path)).name, stats=stream.stats
            )
            if not output.quiet and out is not None:  # started with stdout closed (>&-): as --quiet
                stdout = _stdout_sink(out, output.json_lines, sink_options.on_change, stream)
                sinks.insert(0, _StdoutSink(stdout, out, lambda: stop(CLOSED_STDOUT)))
            if output.stats_every:
                sinks.append(_StatsLines(stream, output.stats_every, say))
            group.sinks = sinks
            _run(stream, group)
        finally:
            stream.close()
            failed = group.close()
            clf.close()
    stats = stream.stats()
    say(_summary(stats, stopped[0] if stopped else None))
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


def _make_sinks(
    output: OutputOptions,
    sink_options: SinkOptions,
    on_event: Any,
    say: Any,
    model_name: str | None = None,
    stats: Any = None,
) -> list[Sink]:
    sinks: list[Sink] = []
    from edgecls.sinks.hass import discovery_for, require_mqtt_sink

    discovery = discovery_for(
        output.mqtt_discovery is not None,
        prefix=output.mqtt_discovery or "homeassistant",
        node_id=output.mqtt_discovery_node_id,
        model=model_name,
    )
    if discovery is not None:
        require_mqtt_sink(list(output.sinks), discovery)
        sink_options = replace(sink_options, mqtt=replace(sink_options.mqtt, discovery=discovery))
    try:
        for spec in output.sinks:
            sink = parse_sink(spec, sink_options, on_event=on_event, stats=stats)
            sinks.append(sink)
            # a broker that refused the login or closed the connection has said so (a sink-error line) already
            if isinstance(sink, MqttSink) and not sink.wait_connected(2.0) and sink.last_error is None:
                say(
                    f"warning: MQTT broker {sink.host}:{sink.port} is not reachable yet; results are buffered "
                    "and sent when it is"
                )
            if isinstance(sink, Dashboard):
                say(sink.announce())
        if output.collect is not None:
            sinks.append(Collector(output.collect, output.collect_policy, model=model_name))
    except BaseException:
        for s in sinks:
            try:
                s.close()
            except EdgeclsError:  # an MQTT sink that delivered nothing yet: the error being raised says more
                pass
        raise
    return sinks


def _run(stream: Stream, sinks: SinkGroup) -> None:
    """Iterate the stream into the sinks until it ends or is stopped."""
    stream.start()
    for result in stream:
        sinks.write(result)


@contextmanager
def _stop_signals(stop: Callable[[str], None]) -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP call ``stop`` with their name during the block, as often as they come: a second one
    while the sinks close (a bounded wait: about 2.5 s for an unreachable MQTT broker) changes nothing, so the
    video is still finished, and after the block a run that a signal stopped ignores them until it has exited;
    SIGKILL remains for the impatient.

    A signal that is ignored when the run starts stays ignored: a background job of a non-interactive shell
    (`cmd &` in a script) inherits an ignored SIGINT, so a Ctrl-C meant for the foreground does not reach it, and
    `nohup` ignores SIGHUP so the run outlives the terminal. SIGTERM stops such a run.
    """

    signalled: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        signalled.append(signum)
        stop(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS if signal.getsignal(sig) != signal.SIG_IGN}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, signal.SIG_IGN if signalled else old)


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
        line = (
            f"{format_line(result)}  {stats.fps:.1f} fps, {stats.frames_dropped} dropped, "
            f"p50 {total.get('p50', 0):.1f} ms"
        )
        pad = " " * max(0, self._width - len(line))
        self._width = len(line)
        self.out.write("\r" + line + pad + ("\n" if changed else ""))
        if changed:
            self._width = 0
        self.out.flush()

    def close(self) -> None:
        self.out.write("\n")
        self.out.flush()


class _StdoutSink:
    """The results on stdout, where a reader that went away ends the run instead of failing every write: the other
    end of a pipe closed (EPIPE: `edgecls run --json | head -1`), or the terminal hung up (EIO). Then ``on_gone``
    stops the stream, and stdout points at /dev/null, as the Python docs advise, so what is still buffered in it
    raises nothing at exit. Any other error (a full disk under `> results.txt`) stays a sink error."""

    def __init__(self, sink: Sink, out: TextIO, on_gone: Callable[[], None]) -> None:
        self.sink, self.out, self.on_gone = sink, out, on_gone
        self.gone = False
        self._gone_errnos = {errno.EPIPE, errno.ECONNRESET} | ({errno.EIO} if _isatty(out) else set())

    def write(self, result: Any) -> None:
        if self.gone:
            return
        try:
            self.sink.write(result)
        except OSError as exc:
            if exc.errno not in self._gone_errnos:
                raise
            self._went_away()
            self.on_gone()

    def close(self) -> None:
        if self.gone:
            return
        try:
            self.sink.close()
        except OSError as exc:  # the reader left after the last result: nothing was lost, nothing to stop
            if exc.errno not in self._gone_errnos:
                raise
            self._went_away()

    def _went_away(self) -> None:
        self.gone = True
        _to_devnull(self.out)


def _isatty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (OSError, ValueError):
        return False


def _to_devnull(stream: TextIO) -> None:
    """Point the file descriptor under ``stream`` at /dev/null: its reader went away, and what is still buffered
    would otherwise raise again when Python flushes it at exit ("Exception ignored ... BrokenPipeError")."""
    try:
        fd = stream.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError):  # not a real file (a test runner's buffer), or already closed
        return
    try:
        os.dup2(devnull, fd)
    except OSError:
        pass
    finally:
        os.close(devnull)


def _stdout_sink(out: TextIO, json_lines: bool, on_change: bool, stream: Stream) -> Sink:
    if not json_lines and out.isatty():
        return _LiveLine(out, on_change, stream)
    return TextSink(out, json_lines=json_lines, on_change=on_change)


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
