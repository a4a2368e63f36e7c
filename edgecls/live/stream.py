"""`Stream`: live classification of a camera, video or network stream, for the CLI and for robotics code.

    with edgecls.Stream("model.tflite", "picam", smoothing=Smoothing(alpha=0.5, hold=3)) as stream:
        for result in stream:
            if result.decision.changed:
                robot.react(result.decision.label)

Capture runs in its own thread (see `edgecls.live.capture`), inference in another, so capture of frame N+1 overlaps
inference of frame N. Results reach the consumer by iteration (``for``/``async for``), by a callback
(``on_result``, called in the inference thread) or by polling (`Stream.latest`, never blocking). Errors in either
thread are raised as project exceptions in the consumer's thread. The library never prints, exits or installs
signal handlers: the CLI does that around it.

What a stream is told is one frozen `StreamConfig` (the classifier's `ClassifierConfig`, the source's `SourceConfig`,
the `Smoothing` and the limits), built once by the caller, a device profile (`Profile.apply`) or the CLI, and handed
down: ``Stream.from_config(model, config)``; the keyword arguments of `Stream` build the same config.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgecls.errors import ConfigError, EdgeclsError
from edgecls.live.capture import END, Capture, Frame, StreamEvent
from edgecls.live.imx500 import SensorClassifier, is_imx500_source
from edgecls.live.smoothing import Decision, Smoother, Smoothing
from edgecls.live.sources import FrameSource, SourceConfig, parse_source
from edgecls.model.classifier import Classifier, ClassifierConfig
from edgecls.model.postprocess import Prediction

log = logging.getLogger(__name__)

LATENCY_PARTS = ("capture_to_start_ms", "preprocess_ms", "invoke_ms", "postprocess_ms", "total_ms")


@dataclass(frozen=True, slots=True)
class Latency:
    """Where the time of one result went, in milliseconds: waiting from capture until inference started,
    preprocessing, the interpreter, postprocessing (ranking and smoothing), and ``total_ms`` from capture to result.
    On the AI Camera, ``preprocess_ms`` and ``invoke_ms`` are the sensor's DSP and network times from the frame's KPI
    (spent before the frame reached the CPU, and added to ``total_ms``)."""

    capture_to_start_ms: float
    preprocess_ms: float
    invoke_ms: float
    postprocess_ms: float
    total_ms: float


@dataclass(frozen=True, slots=True)
class StreamResult:
    """One classified frame: its ``sequence`` number and wall-clock ``timestamp`` at capture, the wall-clock time
    of the result, the ranked ``predictions``, the smoothed ``decision`` and the ``latency``. ``frame`` is the
    captured image (in ``color`` order) for sinks that draw on it; it is left out of `to_dict`."""

    sequence: int
    timestamp: float
    result_time: float
    predictions: list[Prediction]
    decision: Decision
    latency: Latency
    frame: np.ndarray | None = field(default=None, repr=False, compare=False)
    color: str = "rgb"

    @property
    def top(self) -> Prediction | None:
        return self.predictions[0] if self.predictions else None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: sequence, timestamps, top-k, the smoothed decision and the latency."""
        d = self.decision
        lat = self.latency
        return {
            "sequence": self.sequence,
            "timestamp": round(self.timestamp, 6),
            "result_time": round(self.result_time, 6),
            "predictions": [{"index": p.index, "label": p.label, "score": round(p.score, 6)} for p in self.predictions],
            "decision": {
                "label": d.label,
                "index": d.index,
                "score": round(d.score, 6),
                "changed": d.changed,
                "previous": d.previous,
            },
            "latency_ms": {name[:-3]: round(getattr(lat, name), 3) for name in LATENCY_PARTS},
        }


@dataclass(frozen=True)
class StreamStats:
    """A snapshot of a stream: frames captured, classified and dropped, the recent results per second, and the
    p50/p95 of each latency part over the recent results."""

    frames_captured: int
    frames_processed: int
    frames_dropped: int
    reconnects: int
    fps: float
    elapsed_s: float
    latency_ms: dict[str, dict[str, float]]
    frames_skipped: int = 0  # items of a file source that could not be read (each reported as frame-skipped)

    def to_dict(self) -> dict[str, Any]:
        return {
            "frames_captured": self.frames_captured,
            "frames_processed": self.frames_processed,
            "frames_dropped": self.frames_dropped,
            "frames_skipped": self.frames_skipped,
            "reconnects": self.reconnects,
            "fps": round(self.fps, 2),
            "elapsed_s": round(self.elapsed_s, 3),
            "latency_ms": self.latency_ms,
        }


@dataclass(frozen=True)
class StreamConfig:
    """Everything a `Stream` is told, as one value: the ``classifier`` (how to open and rank the model), the
    ``source`` (a `SourceConfig`; a ``--source`` text or camera index is taken as one), the decision's
    ``smoothing``, and the limits: ``fps`` (classify at most this many frames per second), ``max_frames`` and
    ``duration`` (stop after that many results or seconds). ``keep_frames``: attach each captured image to its
    result (for drawing sinks). Checked when made; a device profile fills what is left unset
    (`edgecls.device.profiles.Profile.apply`).

    >>> StreamConfig("demo", max_frames=10).source.spec
    'demo'
    """

    source: SourceConfig = field(default_factory=SourceConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    smoothing: Smoothing = field(default_factory=Smoothing)
    fps: float | None = None
    max_frames: int | None = None
    duration: float | None = None
    keep_frames: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.source, SourceConfig):
            object.__setattr__(self, "source", SourceConfig(self.source))
        for name, kind in (("classifier", ClassifierConfig), ("smoothing", Smoothing)):
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(f"{name} must be a {kind.__name__} (received {getattr(self, name)!r})")
        for name in ("fps", "duration"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be positive (received {value})")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError(f"max_frames must be at least 1 (received {self.max_frames})")


def _open_classifier(
    model: str | os.PathLike[str] | Classifier | SensorClassifier, config: StreamConfig
) -> tuple[Classifier | SensorClassifier, bool]:
    """The stream's classifier and whether the stream opened it (and so closes it)."""
    if isinstance(model, (Classifier, SensorClassifier)):
        return model, False
    if is_imx500_source(config.source.spec):  # the network runs on the sensor: no interpreter on the CPU
        spec = str(config.source.spec)
        return SensorClassifier.open(model, source=spec, labels=config.classifier.labels), True
    return Classifier.from_config(model, config.classifier), True


class Stream:
    """Classify a stream of frames with a model; see the module docstring for the ways to consume it.

    ``model``: a .tflite path (opened as ``classifier``, a `ClassifierConfig`, says) or a ready `Classifier` (not
    closed by the stream; only the config's ``top_k``/``threshold`` apply to it); with ``source="imx500"`` (the AI
    Camera, which runs the network itself) a run folder, its model.tflite or a .rpk, or a ready
    `edgecls.live.imx500.SensorClassifier`. ``source``: a ``--source`` text or camera index (see
    `edgecls.live.sources.parse_source`), a `SourceConfig` (with the camera's size and rate, ``loop``, picamera2
    settings), or a `FrameSource`. ``smoothing``: the decision's `Smoothing`. ``fps``, ``max_frames``,
    ``duration``, ``keep_frames``: see `StreamConfig`; `from_config` takes them all as one. ``on_result``/
    ``on_event``: callbacks from the stream's threads.

    Results wait for their consumer: up to two are queued for an iteration, and a finite source is classified no
    faster than it is taken (a live one drops the oldest unread result instead). This holds from `start` on, so an
    iteration that begins after ``with``/`start` (as `edgecls run` does) misses nothing; a stream consumed only by
    ``on_result`` or by polling `latest` is never held back, and from its first `latest` call on keeps results only
    while an iteration runs.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | Classifier | SensorClassifier,
        source: str | int | SourceConfig | FrameSource,
        *,
        classifier: ClassifierConfig | None = None,
        smoothing: Smoothing | None = None,
        fps: float | None = None,
        max_frames: int | None = None,
        duration: float | None = None,
        on_result: Callable[[StreamResult], None] | None = None,
        on_event: Callable[[StreamEvent], None] | None = None,
        keep_frames: bool = True,
    ) -> None:
        given = source if isinstance(source, FrameSource) else None
        self.config = config = StreamConfig(
            source=SourceConfig() if given is not None else source,  # type: ignore[arg-type]
            classifier=classifier or ClassifierConfig(),
            smoothing=smoothing or Smoothing(),
            fps=fps,
            max_frames=max_frames,
            duration=duration,
            keep_frames=keep_frames,
        )
        self.classifier, self._owns_classifier = _open_classifier(model, config)
        self.source = given or self._make_source(config.source)
        if self.source.computes_outputs != isinstance(self.classifier, SensorClassifier):
            raise ConfigError(
                f"{self.classifier.path} and the source {self.source.name} do not go together: a "
                "network on the AI Camera's sensor needs its imx500 source, and that source a network"
            )
        self.top_k, self.threshold = config.classifier.top_k, config.classifier.threshold
        self.smoothing = config.smoothing
        self.fps, self.max_frames, self.duration = config.fps, config.max_frames, config.duration
        self.on_result, self.on_event = on_result, on_event
        self.keep_frames = config.keep_frames
        # Preparing a file's next frame in the capture thread overlaps it with inference, but only pays when the
        # interpreter leaves a core free: when its threads take every core, the extra work stalls them instead.
        prepare = None
        if isinstance(self.classifier, Classifier) and self.classifier.num_threads < (os.cpu_count() or 1):
            preprocessor = self.classifier.preprocessor
            prepare = lambda image, color: preprocessor.to_array(image, color=color)
        self._capture = Capture(self.source, loop=config.source.loop, on_event=self._emit, prepare=prepare)
        self._results: collections.deque[StreamResult] = collections.deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._latest: StreamResult | None = None
        self._error: EdgeclsError | None = None
        self._done = False
        self._consumers = 0
        self._claimed = False  # a consumer came (an iteration, or a poller of latest()): no longer keep for the first
        self._processed = 0
        self._started_at = self._ended_at = 0.0
        self._recent: collections.deque[tuple[float, Latency]] = collections.deque(maxlen=512)
        self._closed = False

    @classmethod
    def from_config(
        cls,
        model: str | os.PathLike[str] | Classifier | SensorClassifier,
        config: StreamConfig,
        *,
        on_result: Callable[[StreamResult], None] | None = None,
        on_event: Callable[[StreamEvent], None] | None = None,
    ) -> Stream:
        """The stream ``config`` describes (the callbacks are not configuration: they come beside it)."""
        return cls(
            model,
            config.source,
            classifier=config.classifier,
            smoothing=config.smoothing,
            fps=config.fps,
            max_frames=config.max_frames,
            duration=config.duration,
            on_result=on_result,
            on_event=on_event,
            keep_frames=config.keep_frames,
        )

    def _make_source(self, config: SourceConfig) -> FrameSource:
        if isinstance(self.classifier, SensorClassifier):
            return self.classifier.make_source(
                str(config.spec),
                width=config.width,
                height=config.height,
                fps=config.fps,
                picamera=config.picamera.kwargs() if config.picamera else None,
            )
        if is_imx500_source(config.spec):
            raise ConfigError(
                f"--source {config.spec} runs the network on the AI Camera's sensor, not the TFLite model "
                f"{self.classifier.path}: give the run folder or its .rpk"
            )
        spec = self.classifier.input_spec
        return parse_source(config, model_size=(spec.width, spec.height), grayscale=spec.channels == 1)

    # -- lifetime -----------------------------------------------------------------------------------------------

    def start(self) -> Stream:
        """Open the source (CameraError if it cannot be opened) and start capturing and classifying."""
        if self._closed:
            raise ConfigError("this stream is closed; make a new Stream")
        if self._worker is None:
            self._capture.start()
            self._started_at = time.perf_counter()
            self._worker = threading.Thread(target=self._run, name="edgecls-inference", daemon=True)
            self._worker.start()
        return self

    def stop(self) -> None:
        """Ask the stream to stop (safe from any thread or a signal handler); iteration ends soon after."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def close(self, timeout: float = 2.0) -> None:
        """Stop, join the threads (up to ``timeout`` s each), release the camera and the interpreter."""
        if self._closed:
            return
        self._closed = True
        self.stop()
        worker_done = True
        if self._worker is not None:
            self._worker.join(timeout)
            worker_done = not self._worker.is_alive()
        capture_done = self._capture.stop(timeout)
        if not (worker_done and capture_done):
            log.warning(
                "stream threads did not finish within %.1f s; they end when their current call returns", timeout
            )
        if self._owns_classifier and worker_done:
            self.classifier.close()

    def __enter__(self) -> Stream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._done

    @property
    def error(self) -> EdgeclsError | None:
        """The error that ended the stream, if one did."""
        return self._error

    # -- consuming ------------------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[StreamResult]:
        """Every result in order (a finite source loses none, whenever the iteration begins; a live one may skip
        results a slow consumer missed)."""
        with self._consuming():
            while True:
                item = self._next_result(None)
                if item is END:
                    return
                yield item  # type: ignore[misc]

    async def __aiter__(self) -> AsyncIterator[StreamResult]:
        """``async for result in stream``: the same results, waited for without blocking the event loop."""
        loop = asyncio.get_running_loop()
        with self._consuming():
            while True:
                item = await loop.run_in_executor(None, self._next_result, 0.25)
                if item is None:
                    continue
                if item is END:
                    return
                yield item  # type: ignore[misc]

    @contextlib.contextmanager
    def _consuming(self) -> Iterator[None]:
        """Count a consumer for its lifetime and start the stream: results are queued while one iterates (and, until
        the first consumer comes, for it)."""
        with self._cond:
            self._consumers += 1
            self._claimed = True
        try:
            self.start()
            yield
        finally:
            with self._cond:
                self._consumers -= 1
                self._cond.notify_all()

    def latest(self) -> StreamResult | None:
        """The newest result (None before the first), without waiting; raises the error that ended the stream."""
        if self._error is not None:
            raise self._error
        if not self._claimed and self._worker is not None:
            with self._cond:  # a poller: results kept for a first iteration would hold a finite source back
                if not self._claimed:
                    self._claimed = True
                    self._results.clear()
                    self._cond.notify_all()
        return self._latest

    def stats(self) -> StreamStats:
        """Counters, recent results per second, and latency percentiles over the recent results."""
        with self._cond:
            recent = list(self._recent)
        now = time.perf_counter()
        window = (
            [t for t, _ in recent if now - t <= 5.0]
            if self._worker is not None and not self._done
            else [t for t, _ in recent]
        )
        fps = (len(window) - 1) / (window[-1] - window[0]) if len(window) > 1 and window[-1] > window[0] else 0.0
        latency: dict[str, dict[str, float]] = {}
        if recent:
            table = np.array([[getattr(lat, p) for p in LATENCY_PARTS] for _, lat in recent])
            p50, p95 = np.percentile(table, [50, 95], axis=0)
            latency = {
                p[:-3]: {"p50": round(float(a), 3), "p95": round(float(b), 3)}
                for p, a, b in zip(LATENCY_PARTS, p50, p95)
            }
        return StreamStats(
            frames_captured=self._capture.captured,
            frames_processed=self._processed,
            frames_dropped=self._capture.dropped,
            reconnects=self._capture.reconnects,
            fps=fps,
            elapsed_s=(now if not self._done else self._ended_at) - self._started_at if self._started_at else 0.0,
            latency_ms=latency,
            frames_skipped=self._capture.skipped,
        )

    def _next_result(self, timeout: float | None) -> StreamResult | object | None:
        """The next queued result; END when the stream is over (raising its error); None after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._results:
                    result = self._results.popleft()
                    self._cond.notify_all()
                    return result
                if self._done:  # after a stop too: the worker has finished, so every result made is delivered
                    if self._error is not None:
                        raise self._error
                    return END
                remaining = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)  # short waits, so a signal handler in the main thread runs promptly

    # -- the inference thread -----------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._infer_loop()
        except EdgeclsError as exc:
            self._error = exc
        except Exception as exc:  # e.g. an on_result callback that raised: the consumer must hear of it
            log.exception("stream failed")
            self._error = EdgeclsError(f"stream stopped: {type(exc).__name__}: {exc}")
        finally:
            self._ended_at = time.perf_counter()
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _infer_loop(self) -> None:
        clf = self.classifier
        labels = clf.labels.names if clf.labels else None
        smoother = Smoother(self.smoothing, labels=labels)
        capture = self._capture
        interval = 1.0 / self.fps if self.fps else 0.0
        next_at = time.perf_counter()
        deadline = time.perf_counter() + self.duration if self.duration else None
        reconnects = capture.reconnects
        while not self._stop.is_set():
            if interval:
                delay = next_at - time.perf_counter()
                if delay > 0 and self._stop.wait(delay):
                    return
            if deadline is not None and time.perf_counter() >= deadline:
                return
            frame = capture.get(0.1)
            if frame is None:
                continue
            if frame is END:
                return
            if capture.reconnects != reconnects:  # a reopened camera: do not mix old scores with the new view
                reconnects = capture.reconnects
                smoother.reset()
            next_at = max(next_at + interval, time.perf_counter() - interval) if interval else next_at
            result = self._classify(frame, smoother)  # type: ignore[arg-type]
            self._deliver(result)
            if self.max_frames is not None and self._processed >= self.max_frames:
                return

    def _classify(self, frame: Frame, smoother: Smoother) -> StreamResult:
        clf = self.classifier
        start = time.perf_counter()
        on_sensor = frame.outputs is not None
        if on_sensor:  # the AI Camera ran the network: rank what it computed for this frame
            predictions = clf.classify_outputs(frame.outputs, top_k=self.top_k, threshold=self.threshold)
        elif frame.input is not None:  # prepared by the capture thread while the previous frame was classified
            predictions = clf.classify_input(frame.input, top_k=self.top_k, threshold=self.threshold)
        else:
            predictions = clf.classify(frame.image, top_k=self.top_k, threshold=self.threshold, color=frame.color)
        timing = clf.last_timing
        if smoother.trivial:  # no averaging, no hysteresis: the decision is the top prediction, no full scores needed
            top = predictions[0] if predictions else None
            decision = smoother.update_top(top.index if top else None, top.score if top else 0.0)
        else:
            decision = smoother.update(clf.output_scores())
        end = time.perf_counter()
        pre, invoke = (timing.preprocess_ms, timing.invoke_ms) if timing else (0.0, 0.0)
        prepared_ms = frame.preprocess_ms
        # On the sensor, preprocessing (its DSP) and the network ran before the frame reached the CPU: they are
        # added to the total, and the CPU's own time is all postprocessing.
        host_ms = (end - start) * 1e3
        latency = Latency(
            capture_to_start_ms=(start - frame.captured) * 1e3,
            preprocess_ms=prepared_ms + pre,
            invoke_ms=invoke,
            postprocess_ms=host_ms if on_sensor else max(0.0, host_ms - pre - invoke),
            total_ms=(end - frame.captured) * 1e3 + (pre + invoke if on_sensor else 0.0),
        )
        return StreamResult(
            frame.sequence,
            frame.timestamp,
            time.time(),
            predictions,
            decision,
            latency,
            frame.image if self.keep_frames else None,
            frame.color,
        )

    def _deliver(self, result: StreamResult) -> None:
        blocking = not self.source.live
        with self._cond:
            self._processed += 1
            self._recent.append((time.perf_counter(), result.latency))
            self._latest = result
            # a finite source waits for its consumer; a live one never waits: the oldest unread result goes
            while blocking and len(self._results) >= 2 and self._wanted() and not self._stop.is_set():
                self._cond.wait(0.1)
            if self._wanted():
                if len(self._results) >= 2 and not blocking:  # a stopped finite one still hands over what it made
                    self._results.popleft()
                self._results.append(result)
                self._cond.notify_all()
        if self.on_result is not None:
            self.on_result(result)

    def _wanted(self) -> bool:
        """Whether a result is to be queued (under ``_cond``): an iteration runs, or none has yet and no other
        consumer (a callback, a poller) has come first."""
        return self._consumers > 0 or not (self._claimed or self.on_result is not None)

    def _emit(self, event: StreamEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)
