"""Reading a frame source in its own thread, so capture of frame N+1 overlaps inference of frame N.

A live source (camera, network stream) keeps only the newest frame: when inference is slower than the camera the
stale frame is replaced and counted as dropped, so results are never late by a queue of old frames. A finite source
(file, images) is read one frame ahead and waits for it to be taken, so no frame is skipped; it is read just in
time, timed from how long the consumer takes per frame and how long a read takes, so its frames wait about as
little as a camera's. A live source that fails is closed and reopened with backoff, and each loss and recovery is
reported as an event.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgecls.errors import CameraError, EdgeclsError, ImageError
from edgecls.live.sources import NOT_READY, FrameSource

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured frame: ``image`` (uint8, in ``color`` order), its ``sequence`` number (every frame the source
    delivered counts, dropped ones too), wall-clock ``timestamp`` and ``captured`` (time.perf_counter) at capture."""

    image: np.ndarray = field(repr=False)
    sequence: int
    timestamp: float
    captured: float
    color: str
    input: np.ndarray | None = field(default=None, repr=False)  # the model input, when prepared in this thread
    preprocess_ms: float = 0.0
    outputs: Any = field(default=None, repr=False)  # what a sensor that runs the network computed for this frame


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """Something worth telling about a running stream. ``kind``: source-lost, source-reopened, source-ended,
    source-rewound, source-progress (a slow step of the source: the AI Camera's firmware upload), frame-skipped, or
    one a sink reports (sink-disconnected, sink-reconnected, sink-error)."""

    kind: str
    message: str
    timestamp: float


END = object()  # what Capture.get returns once the source has ended and every frame was taken


class Capture:
    """Runs ``source`` in a thread; `get` hands over the newest frame not yet taken.

    ``loop``: start a finite source over at its end. ``backoff``: first and longest wait (seconds) between attempts
    to reopen a failed live source. ``on_event`` is called from the capture thread. ``prepare(image, color)``, when
    given, turns each frame of a finite source into model input in this thread, while the previous frame is being
    classified (a live source's frames are prepared by the consumer, so dropped frames cost nothing).
    """

    def __init__(
        self,
        source: FrameSource,
        *,
        loop: bool = False,
        on_event: Callable[[StreamEvent], None] | None = None,
        backoff: tuple[float, float] = (0.25, 5.0),
        prepare: Callable[[np.ndarray, str], np.ndarray] | None = None,
    ) -> None:
        self.source = source
        self.prepare = prepare
        self.loop = loop
        self.on_event = on_event
        self.backoff = backoff
        self.captured = 0
        self.dropped = 0
        self.reconnects = 0
        self.skipped = 0
        self.error: EdgeclsError | None = None
        source.report = self._event
        self._slot: Frame | None = None
        self._ended = False
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        # just-in-time reading of finite sources: when the last frame was taken, how long the consumer was busy
        # between taking a frame and asking for the next, and how long a read (and prepare) took
        self._taken_at = 0.0
        self._busy: collections.deque[float] = collections.deque(maxlen=16)
        self._work: collections.deque[float] = collections.deque(maxlen=16)

    def start(self) -> None:
        """Open the source (CameraError if it cannot be opened) and start reading it in a thread."""
        if self._thread is not None:
            return
        self.source.open()
        self._thread = threading.Thread(target=self._run, name=f"edgecls-capture-{self.source.name}", daemon=True)
        self._thread.start()

    def get(self, timeout: float | None = None) -> Frame | object | None:
        """The newest untaken frame; None if none came within ``timeout``; END when the source has ended.

        Raises the capture thread's error (a finite source that failed to read, or an unexpected failure).
        """
        asked = time.perf_counter()
        with self._cond:
            if self._taken_at:
                self._busy.append(asked - self._taken_at)
                self._taken_at = 0.0
            if self._slot is None and not self._ended:
                self._cond.wait(timeout)
            frame, self._slot = self._slot, None
            if frame is not None:
                self._taken_at = time.perf_counter()
                self._cond.notify_all()  # a finite source waits for its slot to be free
                return frame
            if self._ended:
                if self.error is not None:
                    raise self.error
                return END
            return None

    @property
    def ended(self) -> bool:
        return self._ended

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop reading and wait up to ``timeout`` s for the thread, which closes the source; True if it finished."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        thread = self._thread
        if thread is None:
            self.source.close()
            return True
        thread.join(timeout)
        return not thread.is_alive()

    # -- the capture thread ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._read_loop()
        except EdgeclsError as exc:
            self.error = exc
        except Exception as exc:  # a bug or an odd driver: surface it in the consumer's thread, never lose it
            log.exception("capture thread failed")
            self.error = CameraError(f"{self.source.name}: capture failed unexpectedly ({type(exc).__name__}: {exc})")
        finally:
            try:
                self.source.close()
            except Exception:  # closing a dead device can fail too; the stream is over either way
                log.warning("closing %s failed", self.source.name, exc_info=True)
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def _read_loop(self) -> None:
        source = self.source
        while not self._stop.is_set():
            if not source.live and not (self._wait_for_free_slot() and self._wait_until_needed()):
                return
            started = time.perf_counter()
            try:
                image = source.read()
            except ImageError as exc:
                self.skipped += 1
                self._event("frame-skipped", str(exc))
                continue
            except CameraError as exc:
                if not source.live:
                    raise
                self._event("source-lost", str(exc))
                if not self._reopen():
                    return
                continue
            captured = time.perf_counter()
            outputs = source.frame_outputs() if source.computes_outputs and image is not None else None
            if outputs is NOT_READY:  # the sensor's network has not run yet: nothing to classify
                continue
            if image is None:
                if self.loop and source.rewind():
                    self._event("source-rewound", f"{source.name}: started over")
                    continue
                self._event("source-ended", f"{source.name}: end of stream")
                return
            if self.prepare is not None and not source.live:
                prepared = self.prepare(image, source.color)
                frame = Frame(
                    image,
                    self.captured,
                    time.time(),
                    captured,
                    source.color,
                    prepared,
                    (time.perf_counter() - captured) * 1e3,
                )
            else:
                frame = Frame(image, self.captured, time.time(), captured, source.color, outputs=outputs)
            self._work.append(time.perf_counter() - started)
            with self._cond:
                if self._slot is not None:
                    self.dropped += 1
                self._slot = frame
                self.captured += 1
                self._cond.notify_all()

    def _wait_for_free_slot(self) -> bool:
        with self._cond:
            while self._slot is not None and not self._stop.is_set():
                self._cond.wait(0.5)
        return not self._stop.is_set()

    def _wait_until_needed(self, margin: float = 0.0005) -> bool:
        """Delay reading a finite source's next frame until just before the consumer will ask for it.

        The consumer's time per frame is taken at the low end of recent ones and a read's at the high end, so the
        frame is ready early rather than late; until there are a few of each, frames are read at once.
        """
        taken_at = self._taken_at
        if not taken_at or len(self._busy) < 4 or len(self._work) < 4:
            return not self._stop.is_set()
        busy = sorted(self._busy)[len(self._busy) // 8]
        work = sorted(self._work)[-1 - len(self._work) // 8]
        delay = taken_at + busy - work - margin - time.perf_counter()
        if delay > 0:
            return not self._stop.wait(delay)
        return not self._stop.is_set()

    def _reopen(self) -> bool:
        """Close and reopen the live source with doubling waits until it works or the capture is stopped."""
        wait, longest = self.backoff
        attempt = 0
        while not self._stop.is_set():
            try:
                self.source.close()
            except Exception:
                log.debug("closing a lost source failed", exc_info=True)
            if self._stop.wait(wait):
                return False
            attempt += 1
            try:
                self.source.open()
            except CameraError as exc:
                log.info("reopening %s failed (attempt %d): %s", self.source.name, attempt, exc)
                wait = min(longest, wait * 2)
                continue
            self.reconnects += 1
            self._event("source-reopened", f"{self.source.name}: reopened after {attempt} attempt(s)")
            return True
        return False

    def _event(self, kind: str, message: str) -> None:
        log.info("%s: %s", kind, message)
        if self.on_event is not None:
            self.on_event(StreamEvent(kind, message, time.time()))
