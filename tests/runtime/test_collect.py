"""`edgecls run --collect`: which frames are kept, where, with what sidecar, how the folder stays bounded, and that
no half-written file is ever left (the whole camera -> relabel -> convert loop is in tests/convert/test_field_loop.py)."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from PIL import Image

from edgecls.collect import Collector, CollectPolicy, folder_name, parse_max, to_rgb
from edgecls.errors import ConfigError, SinkError
from edgecls.postprocess import Prediction
from edgecls.smoothing import Decision
from edgecls.stream import Latency, StreamResult

KEEP_ALL = dict(every_s=0.0, sample=0.0)


def frame_result(seq: int, scores=(0.9, 0.1), label: str = "cat", changed: bool = False, color: str = "rgb",
                 frame: np.ndarray | None = None) -> StreamResult:
    if frame is None:
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[..., 0] = 200  # red in RGB order
    labels = [label, "dog", "bird"]
    predictions = [Prediction(i, labels[i], s) for i, s in enumerate(scores)]
    return StreamResult(seq, time.time(), time.time(), predictions, Decision(label, 0, scores[0] if scores else 0.0, changed, None),
                        Latency(0, 0, 1, 0, 1), frame, color)


def test_the_policy_keeps_unsure_frames_label_changes_and_a_sample():
    policy = CollectPolicy(below=0.6, margin=0.1, sample=0.05)
    assert policy.reason(frame_result(0, (0.9, 0.05)), draw=0.5) is None
    assert policy.reason(frame_result(0, (0.9, 0.05), changed=True), draw=0.5) == "changed"
    assert policy.reason(frame_result(0, (0.55, 0.3)), draw=0.5) == "uncertain"
    assert policy.reason(frame_result(0, (0.62, 0.58)), draw=0.5) == "margin"
    assert policy.reason(frame_result(0, (0.9,)), draw=0.5) is None  # top-k 1: no margin to judge
    assert policy.reason(frame_result(0, ()), draw=0.5) == "uncertain"  # nothing over the threshold
    assert policy.reason(frame_result(0, (0.9, 0.05)), draw=0.01) == "sample"


@pytest.mark.parametrize("text, expected", [("500", (500, None)), ("200MB", (None, 200 << 20)),
                                            ("1.5G", (None, int(1.5 * (1 << 30)))), ("800k", (None, 800 << 10)),
                                            ("64b", (None, 64))])
def test_collect_max_is_frames_or_a_size(text, expected):
    assert parse_max(text) == expected


@pytest.mark.parametrize("text", ["0", "-3", "lots", "2.5", "10 TB"])
def test_a_collect_max_that_means_nothing_is_refused(text):
    with pytest.raises(ConfigError, match="--collect-max"):
        parse_max(text)


def test_labels_become_folder_names_convert_accepts():
    assert folder_name("Egyptian cat") == "Egyptian cat"
    assert folder_name("../etc/passwd") == "_etc_passwd"
    assert folder_name(".hidden") == "hidden" and folder_name(None) == "_unlabelled" and folder_name("") == "_unlabelled"


def test_frames_are_saved_in_rgb_whatever_order_the_source_delivers():
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 250
    assert np.array_equal(to_rgb(rgb[..., ::-1], "bgr"), rgb)
    bgrx = np.concatenate([rgb[..., ::-1], np.full((4, 6, 1), 255, np.uint8)], axis=2)  # picamera2's XRGB8888
    assert np.array_equal(to_rgb(bgrx, "bgr"), rgb)
    assert to_rgb(np.zeros((4, 6, 1), np.uint8), "rgb").shape == (4, 6)
    i420 = np.full((6, 6), 128, np.uint8)  # mid gray in I420 (4 rows of Y, 2 of U and V)
    assert to_rgb(i420, "yuv420").shape == (4, 6, 3)


def test_kept_frames_go_under_their_predicted_label_with_a_sidecar(tmp_path):
    collector = Collector(tmp_path / "field", CollectPolicy(**KEEP_ALL), model="model.tflite")
    collector.write(frame_result(7, (0.5, 0.3), label="cat"))  # unsure
    collector.write(frame_result(8, (0.95, 0.01), label="cat"))  # sure, not sampled: not kept
    collector.write(frame_result(9, (0.9, 0.05), label="dog", changed=True, color="bgr"))
    (cat,) = sorted((tmp_path / "field" / "cat").glob("*.jpg"))
    (dog,) = sorted((tmp_path / "field" / "dog").glob("*.jpg"))
    assert cat.name.endswith("-0000007.jpg") and collector.saved == 2 and dict(collector.by_reason) == {
        "uncertain": 1, "changed": 1}
    sidecar = json.loads(cat.with_suffix(".json").read_text())
    assert sidecar["image"] == cat.name and sidecar["reason"] == "uncertain" and sidecar["model"] == "model.tflite"
    assert sidecar["sequence"] == 7 and sidecar["predictions"][0] == {"index": 0, "label": "cat", "score": 0.5}
    assert sidecar["decision"]["label"] == "cat" and sidecar["time"]
    red = np.asarray(Image.open(cat))
    assert red.shape == (48, 64, 3) and red[..., 0].mean() > 150 > red[..., 2].mean()
    blue = np.asarray(Image.open(dog))  # the same bytes read as BGR: blue
    assert blue[..., 2].mean() > 150 > blue[..., 0].mean()
    assert "collected 2 frame(s)" in collector.summary() and "1 changed, 1 uncertain" in collector.summary()


def test_at_most_one_frame_per_interval(tmp_path):
    collector = Collector(tmp_path, CollectPolicy(every_s=60, sample=0.0))
    for seq in range(5):
        collector.write(frame_result(seq, (0.4, 0.3)))
    assert collector.saved == 1 and collector.rate_limited == 4


def test_the_folder_is_bounded_oldest_first_across_restarts(tmp_path):
    root = tmp_path / "field"
    first = Collector(root, CollectPolicy(max_files=3, **KEEP_ALL))
    for seq in range(2):
        first.write(frame_result(seq, (0.4, 0.3)))
    time.sleep(0.05)
    stale = root / "cat" / ".20260101-000000-0000099.jpg.abc.tmp"  # what a power cut mid-write leaves
    stale.write_bytes(b"half")
    again = Collector(root, CollectPolicy(max_files=3, **KEEP_ALL))
    assert again.files == 2 and not stale.exists()
    for seq in range(10, 13):
        again.write(frame_result(seq, (0.4, 0.3)))
    kept = sorted(p.name for p in (root / "cat").iterdir())
    # the two from before the restart were the oldest: they went first
    assert sorted(name[-11:] for name in kept if name.endswith(".jpg")) == ["0000010.jpg", "0000011.jpg", "0000012.jpg"]
    assert len([n for n in kept if n.endswith(".json")]) == 3 and again.removed == 2


def test_a_size_bound_keeps_the_newest_that_fit(tmp_path):
    noisy = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)  # about 40 kB as JPEG
    collector = Collector(tmp_path, CollectPolicy(max_bytes=100_000, **KEEP_ALL))
    for seq in range(6):
        collector.write(frame_result(seq, (0.4, 0.3), frame=noisy))
    sizes = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert sizes <= 100_000 and 1 <= collector.files < 6 and collector.removed == 6 - collector.files


def test_a_full_disk_is_a_sink_error_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    collector = Collector(tmp_path, CollectPolicy(**KEEP_ALL))
    real_fsync = os.fsync

    def full(fd):  # the disk fills up as the image is synced
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(SinkError, match="No space left on device"):
        collector.write(frame_result(1, (0.4, 0.3)))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [] and collector.saved == 0


def test_an_unusable_folder_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(SinkError, match="cannot use .* for collected frames"):
        Collector(tmp_path / "file" / "field")
    with pytest.raises(ConfigError, match="--collect-below must be in"):
        CollectPolicy(below=1.5)
