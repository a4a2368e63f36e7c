"""`edgecls run --collect`: which frames are kept, where, with what sidecar, how the folder stays bounded, that no
half-written file is ever left, that only the collector's own files are ever counted or removed (links, foreign files),
that one DIR has one collector (two real processes), and that every class name gets a folder that reads back as it
(the whole camera -> relabel -> convert loop is in tests/convert/test_field_loop.py; the convert side of the names
in tests/convert/test_extra_data_names.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import ROOT, one_error_line
from PIL import Image

from edgecls.errors import ConfigError, SinkError
from edgecls.live.smoothing import Decision
from edgecls.live.stream import Latency, StreamResult
from edgecls.model.images import to_rgb
from edgecls.model.postprocess import Prediction
from edgecls.sinks.classfolders import MAX_BYTES, UNLABELLED, class_of_folder
from edgecls.sinks.collect import LOCK_NAME, MARKER, Collector, CollectPolicy, folder_name, parse_max

KEEP_ALL = {"every_s": 0.0, "sample": 0.0}


def frame_result(
    seq: int,
    scores=(0.9, 0.1),
    label: str = "cat",
    changed: bool = False,
    color: str = "rgb",
    frame: np.ndarray | None = None,
) -> StreamResult:
    if frame is None:
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[..., 0] = 200  # red in RGB order
    labels = [label, "dog", "bird"]
    predictions = [Prediction(i, labels[i], s) for i, s in enumerate(scores)]
    return StreamResult(
        seq,
        time.time(),
        time.time(),
        predictions,
        Decision(label, 0, scores[0] if scores else 0.0, changed, None),
        Latency(0, 0, 1, 0, 1),
        frame,
        color,
    )


def test_the_policy_keeps_unsure_frames_label_changes_and_a_sample():
    policy = CollectPolicy(below=0.6, margin=0.1, sample=0.05)
    assert policy.reason(frame_result(0, (0.9, 0.05)), draw=0.5) is None
    assert policy.reason(frame_result(0, (0.9, 0.05), changed=True), draw=0.5) == "changed"
    assert policy.reason(frame_result(0, (0.55, 0.3)), draw=0.5) == "uncertain"
    assert policy.reason(frame_result(0, (0.62, 0.58)), draw=0.5) == "margin"
    assert policy.reason(frame_result(0, (0.9,)), draw=0.5) is None  # top-k 1: no margin to judge
    assert policy.reason(frame_result(0, ()), draw=0.5) == "uncertain"  # nothing over the threshold
    assert policy.reason(frame_result(0, (0.9, 0.05)), draw=0.01) == "sample"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("500", (500, None)),
        ("200MB", (None, 200 << 20)),
        ("1.5G", (None, int(1.5 * (1 << 30)))),
        ("800k", (None, 800 << 10)),
        ("64b", (None, 64)),
    ],
)
def test_collect_max_is_frames_or_a_size(text, expected):
    assert parse_max(text) == expected


@pytest.mark.parametrize("text", ["0", "-3", "lots", "2.5", "10 TB"])
def test_a_collect_max_that_means_nothing_is_refused(text):
    with pytest.raises(ConfigError, match="--collect-max"):
        parse_max(text)


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
    assert (
        cat.name.endswith("-0000007.jpg")
        and collector.saved == 2
        and dict(collector.by_reason) == {"uncertain": 1, "changed": 1}
    )
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
    first.close()  # a restart: the folder's lock goes with the run
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
    sizes = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file() and p.name != LOCK_NAME)
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
    assert [p for p in tmp_path.rglob("*") if p.is_file() and p.name != LOCK_NAME] == [] and collector.saved == 0


def test_an_unusable_folder_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(SinkError, match="cannot use .* for collected frames"):
        Collector(tmp_path / "file" / "field")
    with pytest.raises(ConfigError, match="--collect-below must be in"):
        CollectPolicy(below=1.5)


# --- class names as folder names (the convert side reads them back: tests/convert/test_extra_data_names.py) -----------

CJK = "猫"  # 3 bytes of UTF-8: 86 of them are 258 bytes, over the 255 a file name may have
HOSTILE_LABELS = [
    "dog's",
    "Egyptian cat",
    "a/b",
    "..",
    ".",
    ".hidden",
    "..hidden",
    "a\x00b",
    "tab\there",
    "new\nline",
    "\x7f",
    "\u202eevil.exe",
    "trailing.",
    "trailing ",
    " leading",
    "con",
    "CON.txt",
    "lpt1",
    "Cat",
    "cat",
    "CAT",
    "caT",
    "ß",
    "ss",
    "é",
    "e\u0301",
    CJK * 86,
    CJK * 300,
    CJK * 300 + "x",
    "🐱" * 70,
    "a" * 300,
    "a" * 300 + "b",
    "100%",
    "%unlabelled",
    "_unlabelled",
    "%~",
    "50%~off",
    "",
    "\udc80",
    "back\\slash",
    'q"uo:te*?<>|',
    "x" * 125 + "%",
]


def usable_folder_name(name: str) -> bool:
    """One path component that any file system takes, and that convert does not pass over as hidden."""
    return (
        0 < len(name.encode()) <= MAX_BYTES
        and name not in (".", "..")
        and not name.startswith(".")
        and not any(c in name for c in '/\\:*?"<>|')
        and all(unicodedata.category(c)[0] != "C" for c in name)
        and not name.endswith((".", " "))
    )


@pytest.mark.parametrize("label", HOSTILE_LABELS, ids=lambda s: repr(s)[:24])
def test_every_label_gets_a_usable_folder_that_reads_back_as_it(label):
    name = folder_name(label)
    assert usable_folder_name(name), name
    assert class_of_folder(name, HOSTILE_LABELS) == label


def test_names_that_differ_by_case_form_or_escaping_never_share_a_folder():
    names = [folder_name(label) for label in HOSTILE_LABELS] + [folder_name(None)]
    # distinct even where a file system ignores case and Unicode normal form (macOS, Windows, a FAT memory card)
    folded = {unicodedata.normalize("NFC", n.casefold()) for n in names}
    assert len(set(names)) == len(folded) == len(HOSTILE_LABELS) + 1
    assert folder_name(None) == UNLABELLED and class_of_folder(UNLABELLED, HOSTILE_LABELS) is None


def test_a_long_label_is_cut_by_bytes_not_characters():
    for label in (CJK * 86, CJK * 300, "🐱" * 70):
        name = folder_name(label)
        assert len(name.encode()) <= MAX_BYTES and name.startswith(CJK * 30 if CJK in label else "🐱" * 20)
    assert folder_name(CJK * 42) == CJK * 42  # 126 bytes: fits, kept whole


def test_every_hostile_label_is_collected_and_each_folder_names_its_class(tmp_path):
    field = tmp_path / "field"
    collector = Collector(field, CollectPolicy(**KEEP_ALL))
    try:
        for seq, label in enumerate(HOSTILE_LABELS):
            collector.write(frame_result(seq, (0.4, 0.3), label=label))
    finally:
        collector.close()
    assert collector.saved == len(HOSTILE_LABELS)
    folders = [p for p in field.iterdir() if p.is_dir()]
    assert len(folders) == len(HOSTILE_LABELS) and all(p.resolve().parent == field.resolve() for p in folders)
    for folder in folders:
        (image,) = folder.glob("*.jpg")
        sidecar = json.loads(image.with_suffix(".json").read_text())
        assert class_of_folder(folder.name, HOSTILE_LABELS) == sidecar["predicted"]
    assert sorted(json.loads(p.read_text())["predicted"] for p in field.rglob("*.json")) == sorted(HOSTILE_LABELS)


# --- only its own files, never through a link -------------------------------------------------------------------------


def snapshot(top: Path) -> dict[str, tuple]:
    """Every entry under ``top`` (links listed, never followed) with its bytes or its target."""
    found: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(top))
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_file():
                found[rel] = ("file", path.read_bytes())
            else:
                found[rel] = ("folder",) if path.is_dir() else ("other",)
    return found


def frames_like_ours(folder: Path, count: int) -> None:
    """Photos named as a collector names frames, with sidecars that even carry the marker: the worst case."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        name = f"20250101-000000-{i:07d}"
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(folder / f"{name}.jpg")
        (folder / f"{name}.json").write_text(json.dumps({MARKER: 1, "image": f"{name}.jpg"}))
    (folder / f".{name}.jpg.abc12345.tmp").write_bytes(b"someone else's")


def hostile_field(tmp_path: Path) -> tuple[Path, Path]:
    """DIR with a linked sub-folder and linked files that lead to five photos outside, and foreign files inside."""
    outside = tmp_path / "outside"
    frames_like_ours(outside, 5)
    (outside / "single.jpg").write_bytes(b"not a frame")
    field = tmp_path / "field"
    cat = field / folder_name("cat")
    cat.mkdir(parents=True)
    (field / "photos").symlink_to(outside)  # a linked sub-folder
    (field / "cat-link").symlink_to(outside, target_is_directory=True)
    (cat / "20250101-000000-0000007.jpg").symlink_to(outside / "single.jpg")  # a linked file with a real sidecar
    (cat / "20250101-000000-0000007.json").write_text(json.dumps({MARKER: 1, "image": "20250101-000000-0000007.jpg"}))
    Image.new("RGB", (8, 8)).save(cat / "20250101-000000-0000008.jpg")  # a real file whose sidecar is a link
    (cat / "20250101-000000-0000008.json").symlink_to(outside / "20250101-000000-0000000.json")
    Image.new("RGB", (8, 8)).save(cat / "holiday.jpg")  # the person's own files
    (cat / "holiday.json").write_text("{}")
    Image.new("RGB", (8, 8)).save(cat / "20250101-000000-0000009.jpg")  # our name, no sidecar
    Image.new("RGB", (8, 8)).save(cat / "20250101-000000-0000010.jpg")  # our name, a sidecar without the marker
    (cat / "20250101-000000-0000010.json").write_text(json.dumps({"image": "20250101-000000-0000010.jpg"}))
    Image.new("RGB", (8, 8)).save(cat / "20250101-000000-0000011.jpg")  # a sidecar nested too deep for json
    (cat / "20250101-000000-0000011.json").write_text("[" * 100_000)
    Image.new("RGB", (8, 8)).save(cat / "20250101-000000-0000012.jpg")  # a sidecar that is a FIFO: no hang
    os.mkfifo(cat / "20250101-000000-0000012.json")
    (cat / "20250101-000000-0000013.jpg").mkdir()  # a folder named as a frame
    (cat / ".holiday.jpg.tmp").write_bytes(b"someone's download")
    (field / "notes.txt").write_text("mine")
    frames_like_ours(field / ".backup", 2)  # a hidden folder: not looked into
    return field, outside


def test_collect_never_follows_a_link_out_of_dir_and_removes_only_its_own_frames(tmp_path):
    field, outside = hostile_field(tmp_path)
    before_outside, before_field = snapshot(outside), snapshot(field)
    collector = Collector(field, CollectPolicy(max_files=2, **KEEP_ALL))
    try:
        assert collector.files == 0  # nothing there is ours
        for seq in range(6):
            collector.write(frame_result(seq, (0.4, 0.3), label="cat"))
    finally:
        collector.close()
    assert snapshot(outside) == before_outside and len(before_outside) == 5 * 2 + 2
    after = snapshot(field)
    ours = {rel for rel in after if rel not in before_field and rel != LOCK_NAME}
    assert {rel: after[rel] for rel in before_field} == before_field  # every foreign file as it was
    assert sorted(rel.split("-")[-1] for rel in ours) == ["0000004.jpg", "0000004.json", "0000005.jpg", "0000005.json"]
    assert all(rel.startswith("cat/") for rel in ours)
    assert collector.saved == 6 and collector.removed == 4 and collector.files == 2


def test_a_restart_adopts_only_its_own_frames(tmp_path):
    field, outside = hostile_field(tmp_path)
    first = Collector(field, CollectPolicy(**KEEP_ALL))
    for seq in range(3):
        first.write(frame_result(seq, (0.4, 0.3), label="cat"))
    first.close()
    again = Collector(field, CollectPolicy(max_files=1, **KEEP_ALL))
    try:
        assert again.files == 3
        before = snapshot(outside)
        again.write(frame_result(10, (0.4, 0.3), label="cat"))
        assert again.removed == 3 and snapshot(outside) == before
        assert max(p.name for p in (field / "cat").glob("2*.jpg")).endswith("-0000010.jpg")
    finally:
        again.close()


def test_a_class_folder_that_is_a_link_is_an_error_and_nothing_is_written_through_it(tmp_path):
    field, outside = hostile_field(tmp_path)
    before = snapshot(outside)
    collector = Collector(field, CollectPolicy(max_files=1, **KEEP_ALL))
    try:
        with pytest.raises(SinkError, match="symbolic link or not a folder; collect writes only into real folders"):
            collector.write(frame_result(0, (0.4, 0.3), label="photos"))  # the predicted class's folder is a link
        (field / "notes.txt").rename(field / "notes.txt.moved")
        with pytest.raises(SinkError, match="not a folder"):
            (field / "notes.txt.moved").rename(field / "notes")
            collector.write(frame_result(1, (0.4, 0.3), label="notes"))  # and a file where the folder should be
        collector.write(frame_result(2, (0.4, 0.3), label="cat"))
        # the folder is swapped for a link while running: the next frame is refused, and the trim does not follow it
        (field / "cat").rename(field / "cat-before")
        (field / "cat").symlink_to(outside)
        with pytest.raises(SinkError, match="symbolic link"):
            collector.write(frame_result(3, (0.4, 0.3), label="cat"))
        collector.write(frame_result(4, (0.4, 0.3), label="dog"))  # over max_files: the oldest, behind the link
    finally:
        collector.close()
    assert snapshot(outside) == before
    assert len(list((field / "cat-before").glob("*-0000002.*"))) == 2  # not removed through the link either


def test_a_linked_lock_file_is_refused_and_its_target_left_alone(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    field = tmp_path / "field"
    field.mkdir()
    (field / LOCK_NAME).symlink_to(target)
    with pytest.raises(
        SinkError,
        match=f"cannot use {field} for collected frames: {field / LOCK_NAME} is a link or a folder; remove it",
    ):
        Collector(field)
    assert target.read_text() == "keep me"


# --- one collector per folder ----------------------------------------------------------------------------------------

HOLD = (
    "import sys\nfrom edgecls.sinks.collect import Collector\nc = Collector(sys.argv[1])\nprint('holding', flush=True)\n"
    "sys.stdin.read()\n"
)
TRY = (
    "import sys\nfrom edgecls.sinks.collect import Collector\nfrom edgecls.errors import SinkError\n"
    "try:\n    Collector(sys.argv[1]).close()\nexcept SinkError as exc:\n    print(exc)\n    sys.exit(1)\n"
)


def test_a_second_collector_in_the_same_process_is_refused_until_the_first_closes(tmp_path):
    first = Collector(tmp_path)
    try:
        with pytest.raises(
            SinkError,
            match=rf"already being collected into by another edgecls run \(process "
            rf"{os.getpid()}\); one collector per folder keeps --collect-max",
        ):
            Collector(tmp_path)
    finally:
        first.close()
    Collector(tmp_path).close()


def test_two_processes_on_one_folder_one_is_refused_and_the_lock_dies_with_its_holder(tmp_path, coral):
    field = tmp_path / "field"
    images = tmp_path / "images"
    images.mkdir()
    (images / "cat.bmp").write_bytes((coral / "cat.bmp").read_bytes())
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(field)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        assert holder.stdout.readline().strip() == "holding", holder.stderr.read()
        second = subprocess.run(
            [sys.executable, "-c", TRY, str(field)], capture_output=True, text=True, env=env, timeout=120, check=False
        )
        assert second.returncode == 1 and f"(process {holder.pid})" in second.stdout, second.stderr
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgecls",
                "run",
                str(coral / "mobilenet_v1_0.25_128_quant.tflite"),
                "--source",
                str(images),
                "-q",
                "--collect",
                str(field),
                "--collect-sample",
                "1",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        error = one_error_line(
            SimpleNamespace(stderr=cli.stderr, exit_code=cli.returncode, output=cli.stdout + cli.stderr)
        )
        assert f"{field} is already being collected into by another edgecls run (process {holder.pid})" in error
        assert not list(field.rglob("*.jpg"))
        holder.kill()  # a crash: the kernel drops the lock with the process
        holder.wait(30)
        again = subprocess.run(
            [sys.executable, "-c", TRY, str(field)], capture_output=True, text=True, env=env, timeout=120, check=False
        )
        assert again.returncode == 0, again.stdout + again.stderr
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(30)
        for stream in (holder.stdin, holder.stdout, holder.stderr):
            stream.close()


def test_run_collect_with_links_in_dir_through_the_command_line(tmp_path, coral):
    """The issue's reproducer: five photos behind a linked sub-folder and linked files, --collect-max 2."""
    field, outside = hostile_field(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        (images / f"{i}.bmp").write_bytes((coral / "cat.bmp").read_bytes())
    before_outside, before_field = snapshot(outside), snapshot(field)
    from conftest import invoke

    result = invoke(
        "run",
        coral / "mobilenet_v1_0.25_128_quant.tflite",
        "--source",
        images,
        "-q",
        "--collect",
        field,
        "--collect-max",
        "2",
        "--collect-every",
        "0",
        "--collect-sample",
        "1",
    )
    assert result.exit_code == 0, result.output
    assert "collected 5 frame(s)" in result.stderr and "3 oldest removed" in result.stderr
    assert snapshot(outside) == before_outside
    after = snapshot(field)
    assert {rel: after[rel] for rel in before_field} == before_field
    assert len([rel for rel in after if rel not in before_field and rel.endswith(".jpg")]) == 2
