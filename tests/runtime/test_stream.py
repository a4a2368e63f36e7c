"""`Stream` on a real model and a real video file: every frame, latest(), callbacks, async, smoothing, limits,
clean shutdown, errors in the consumer's thread, and reconnecting a source that fails on purpose.

Time is only ever a bound a busy machine keeps (load ~15 on 2 cores): counts and orders are asserted, the speed itself
is measured in benchmarks/."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import numpy as np
import pytest
from conftest import BACKEND

from edgecls import ClassifierConfig, Smoothing, SourceConfig, Stream
from edgecls.errors import CameraError, EdgeclsError
from edgecls.live.sources import FrameSource

# (tests that need OpenCV are marked needs_opencv)

MODEL = "mobilenet_v2_1.0_224_quant.tflite"


def stream(coral, source, top_k=5, loop=False, **kwargs):  # type: ignore[no-untyped-def]
    if loop:
        source = SourceConfig(source, loop=True)
    return Stream(
        coral / MODEL, source, classifier=ClassifierConfig(num_threads=2, backend=BACKEND, top_k=top_k), **kwargs
    )


def test_every_frame_of_a_file_is_classified_in_order(coral, cat_video):
    with stream(coral, str(cat_video), top_k=2) as s:
        results = list(s)
        stats = s.stats()
    assert [r.sequence for r in results] == list(range(24))
    assert {r.predictions[0].label for r in results[:12]} == {"Egyptian cat"}
    assert all(r.predictions[0].label.startswith("dragonfly") for r in results[12:])
    assert results[0].decision.changed and results[12].decision.changed and not results[5].decision.changed
    assert stats.frames_processed == 24 and stats.frames_captured == 24 and stats.frames_dropped == 0
    lat = results[-1].latency
    assert lat.invoke_ms > 0 and lat.total_ms >= lat.invoke_ms + lat.preprocess_ms
    assert set(stats.latency_ms) == {"capture_to_start", "preprocess", "invoke", "postprocess", "total"}
    d = results[0].to_dict()
    assert d["decision"]["label"] == "Egyptian cat" and "frame" not in d and d["latency_ms"]["total"] > 0


def test_smoothing_holds_the_decision_across_the_cut(coral, cat_video):
    with stream(coral, str(cat_video), smoothing=Smoothing(hold=4)) as s:
        results = list(s)
    decided = [r.decision.label for r in results]
    assert decided[12:15] == ["Egyptian cat"] * 3  # the new label must lead 4 frames
    assert decided[15].startswith("dragonfly") and results[15].decision.changed
    assert results[15].decision.previous == "Egyptian cat"


def test_latest_and_on_result_without_iterating(coral, cat_video):
    seen = []
    threads = set()

    def on_result(result):  # type: ignore[no-untyped-def]
        seen.append(result.sequence)
        threads.add(threading.current_thread().name)

    s = stream(coral, str(cat_video), on_result=on_result)
    assert s.latest() is None
    with s:
        deadline = time.monotonic() + 120
        while s.running and time.monotonic() < deadline:
            time.sleep(0.01)
        latest = s.latest()
    assert seen == list(range(24)) and latest.sequence == 23
    assert threads == {"edgecls-inference"}


def test_async_for(coral, cat_video):
    async def consume():  # type: ignore[no-untyped-def]
        labels = []
        with stream(coral, str(cat_video), max_frames=5) as s:
            async for result in s:
                labels.append(result.predictions[0].label)
                await asyncio.sleep(0)
        return labels

    assert asyncio.run(consume()) == ["Egyptian cat"] * 5


def test_limits_loop_and_fps_cap(coral, cat_video):
    with stream(coral, str(cat_video), loop=True, max_frames=30) as s:
        results = list(s)
    assert len(results) == 30 and results[-1].sequence == 29  # looped past the 24 frames of the file
    capped = stream(coral, "demo", fps=20, max_frames=6, keep_frames=False)  # the model loads before the clock
    with capped as s:
        results = list(s)
    gaps = np.diff([r.result_time for r in results])
    # at most 20 a second over the run (fewer where invoke is slow). The cap keeps to its schedule and catches up by
    # at most one interval, so a slow frame may be followed by a quick one: not each gap but the span is bounded,
    # the sixth frame starting at least three intervals after the first, whose own inference the span leaves out
    first_ms = results[0].latency.total_ms
    assert len(results) == 6 and gaps.sum() >= 3 * 0.05 - first_ms / 1000 - 0.005, (gaps, first_ms)
    assert results[0].frame is None
    timed = stream(coral, "demo", fps=20, duration=0.6, keep_frames=False)
    start = time.monotonic()
    with timed as s:
        results = list(s)
    elapsed = time.monotonic() - start
    assert len(results) <= 14 and 0.55 <= elapsed < 30  # ends after its duration, never before


def test_close_joins_threads_and_releases_the_source(coral, cat_video, caplog):
    before = threading.active_count()
    s = stream(coral, "demo")
    s.start()
    deadline = time.monotonic() + 120
    while s.latest() is None and time.monotonic() < deadline:  # running: a result came out
        time.sleep(0.01)
    start = time.monotonic()
    s.close()
    # joined, not left to finish: close() would wait out its 2 s join timeout per thread and warn
    assert time.monotonic() - start < 10 and "did not finish" not in caplog.text
    assert threading.active_count() == before
    assert s.source._frames is None  # the capture thread closed its source
    s.close()  # twice is fine
    with pytest.raises(EdgeclsError, match="closed"):
        s.start()


class FlakySource(FrameSource):
    """A live source that fails on purpose: after ``good`` frames it raises CameraError, then refuses to reopen
    ``refusals`` times, then works again."""

    live = True
    color = "rgb"
    name = "flaky"

    def __init__(self, good: int = 5, refusals: int = 2) -> None:
        self.good, self.refusals = good, refusals
        self.opens = 0
        self.reads = 0
        self.failed = False

    def open(self) -> None:
        self.opens += 1
        if self.failed and self.refusals > 0:
            self.refusals -= 1
            raise CameraError("flaky camera unplugged")

    def read(self) -> np.ndarray:
        self.reads += 1
        if self.reads == self.good and not self.failed:
            self.failed = True
            raise CameraError("flaky camera stopped")
        time.sleep(0.005)
        return np.full((120, 160, 3), 90, np.uint8)


def test_a_lost_camera_is_reopened_with_backoff_and_reported(coral):
    source = FlakySource()
    events = []
    with stream(coral, source, on_event=events.append, max_frames=12) as s:
        s._capture.backoff = (0.05, 0.2)
        results = list(s)
        stats = s.stats()
    kinds = [e.kind for e in events]
    assert kinds[:2] == ["source-lost", "source-reopened"]
    assert "after 3 attempt(s)" in events[1].message  # two refusals, then success
    assert source.opens == 4 and len(results) == 12 and stats.reconnects == 1


class BrokenSource(FrameSource):
    live = False
    name = "broken"

    def read(self) -> np.ndarray:
        raise CameraError("the video file became unreadable")


def test_errors_surface_in_the_consumers_thread(coral, cat_video):
    with stream(coral, BrokenSource()) as s:
        with pytest.raises(CameraError, match="became unreadable"):
            list(s)
        assert isinstance(s.error, CameraError)

    def bad_callback(result):  # type: ignore[no-untyped-def]
        raise RuntimeError("robot arm offline")

    with stream(coral, str(cat_video), on_result=bad_callback) as s:
        with pytest.raises(EdgeclsError, match="robot arm offline"):
            list(s)
        with pytest.raises(EdgeclsError):
            s.latest()


class FastLiveSource(FrameSource):
    """A live source quicker than the model: stale frames must be dropped, never queued."""

    live = True
    name = "fast"

    def read(self) -> np.ndarray:
        time.sleep(0.0005)
        return np.zeros((120, 160, 3), np.uint8)


def test_a_live_source_keeps_only_the_newest_frame(coral):
    with stream(coral, FastLiveSource(), max_frames=10) as s:
        results = list(s)
        stats = s.stats()
    assert stats.frames_dropped > 0
    assert results[-1].sequence > 10  # results skip the dropped frames
    # no backlog of stale frames: a frame waits at most for the inference before it, never for a queue of them
    # (with a queue, the wait would grow by one inference per result)
    longest = max(r.latency.total_ms - r.latency.capture_to_start_ms for r in results)
    assert max(r.latency.capture_to_start_ms for r in results[2:]) < 2 * longest + 50


def test_a_bad_image_in_a_folder_is_skipped_and_reported(coral, tmp_path):
    import shutil

    shutil.copy(coral / "cat.bmp", tmp_path / "a_cat.bmp")
    (tmp_path / "b_broken.jpg").write_bytes(b"not a jpeg")
    shutil.copy(coral / "dragonfly.bmp", tmp_path / "c_fly.bmp")
    events = []
    with stream(coral, str(tmp_path), on_event=events.append) as s:
        labels = [r.predictions[0].label for r in s]
    assert labels[0] == "Egyptian cat" and labels[1].startswith("dragonfly") and len(labels) == 2
    skipped = [e for e in events if e.kind == "frame-skipped"]
    assert len(skipped) == 1 and "b_broken.jpg" in skipped[0].message
    assert events[-1].kind == "source-ended"


class CountedFrames(FrameSource):
    """A finite source of ``n`` plain frames."""

    live = False
    name = "counted"

    def __init__(self, n: int) -> None:
        self.n, self.reads = n, 0

    def read(self) -> np.ndarray | None:
        if self.reads == self.n:
            return None
        self.reads += 1
        return np.full((120, 160, 3), 20 * self.reads, np.uint8)


def test_a_finite_source_keeps_its_results_for_an_iteration_that_starts_late(coral):
    # `edgecls run` starts the stream, then iterates: results made in between were lost (its first frame, whose
    # label changed). Here the consumer comes only after three results were made, so the order is forced.
    with stream(coral, CountedFrames(8), keep_frames=False) as s:
        deadline = time.monotonic() + 120
        while s.stats().frames_processed < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert s.stats().frames_processed >= 3
        results = list(s)
        stats = s.stats()
    assert [r.sequence for r in results] == list(range(8)) and stats.frames_processed == 8
    assert results[0].decision.changed


def test_polling_latest_reads_a_finite_source_to_its_end(coral):
    # a stream that is only polled is not held back for an iteration that never comes (robot_loop.py on a file)
    with stream(coral, CountedFrames(8), keep_frames=False) as s:
        deadline = time.monotonic() + 120
        while s.running and time.monotonic() < deadline:
            s.latest()
            time.sleep(0.01)
        assert not s.running and s.latest().sequence == 7 and s.stats().frames_processed == 8
        assert list(s) == []  # nothing was kept for an iteration nobody asked for


def test_a_stream_is_made_from_one_config(coral, cat_video):
    """StreamConfig carries the classifier's, the source's and the smoothing's configuration and the limits, checked
    when made; Stream.from_config and Stream's keyword arguments build the same stream, and a Classifier opened from
    a ClassifierConfig ranks as it says."""
    import dataclasses

    from edgecls import Classifier, StreamConfig
    from edgecls.errors import ConfigError

    for make, says in [
        (lambda: StreamConfig("demo", fps=0), "fps must be positive (received 0)"),
        (lambda: StreamConfig("demo", max_frames=0), "max_frames must be at least 1 (received 0)"),
        (lambda: StreamConfig("demo", smoothing={"hold": 2}), "smoothing must be a Smoothing (received {'hold': 2})"),
        (lambda: ClassifierConfig(top_k=0), "top_k must be at least 1 (received 0)"),
        (lambda: ClassifierConfig(num_threads=0), "num_threads must be between 1 and 256 (received 0)"),
        (lambda: ClassifierConfig(threshold=1.5), "threshold must be between 0 and 1 (received 1.5)"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(says)):
            make()
    config = StreamConfig(
        SourceConfig(str(cat_video), loop=True),
        classifier=ClassifierConfig(num_threads=2, backend=BACKEND, top_k=2, labels=None),
        smoothing=Smoothing(hold=4),
        max_frames=30,
        keep_frames=False,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_frames = 3  # type: ignore[misc]
    with Stream.from_config(coral / MODEL, config) as s:
        results = list(s)
    assert s.config == config and len(results) == 30 and results[-1].sequence == 29  # looped
    assert all(len(r.predictions) == 2 and r.frame is None for r in results)
    assert [r.decision.label for r in results[12:15]] == ["Egyptian cat"] * 3  # hold=4 across the cut
    with Classifier.from_config(coral / MODEL, ClassifierConfig(num_threads=1, backend=BACKEND, top_k=1)) as clf:
        assert clf.num_threads == 1 and [p.label for p in clf.classify(coral / "cat.bmp")] == ["Egyptian cat"]
        assert len(clf.classify(coral / "cat.bmp", top_k=3)) == 3
