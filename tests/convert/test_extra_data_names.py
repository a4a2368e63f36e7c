"""`convert --extra-data DIR`, the listing only (no training, no TensorFlow): the class folders `run --collect` writes
read back as their classes (the same mapping, edgecls.sinks.classfolders), plain class-name folders still do, and the walk
never follows a link out of DIR, names what it cannot read once, and never raises a traceback."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from edgecls.convert.data import _extra_samples, scan
from PIL import Image

from edgecls.errors import DataError
from edgecls.live.smoothing import Decision
from edgecls.live.stream import Latency, StreamResult
from edgecls.model.postprocess import Prediction
from edgecls.sinks.classfolders import UNLABELLED, folder_name
from edgecls.sinks.collect import Collector, CollectPolicy

CLASSES = [
    "dog's",
    "cat",
    "Cat",
    "CAT",
    "Egyptian cat",
    "a/b",
    "..",
    ".",
    ".hidden",
    "a\x00b",
    "bell\x07",
    "new\nline",
    "trailing.",
    "con",
    "ß",
    "ss",
    "é",
    "e\u0301",
    "猫" * 86,
    "猫" * 300,
    "猫" * 300 + "!",
    "100%",
    "50%~off",
    "",
    "%unlabelled",
    'q"uo:te*?<>|',
]


def result(seq: int, label: str | None) -> StreamResult:
    frame = np.full((16, 16, 3), seq * 9 % 256, np.uint8)
    predictions = [Prediction(0, label, 0.4)] if label is not None else []
    return StreamResult(
        seq,
        time.time(),
        time.time(),
        predictions,
        Decision(label, 0, 0.4, False, None),
        Latency(0, 0, 1, 0, 1),
        frame,
        "rgb",
    )


def collect(field: Path, labels: list[str | None]) -> None:
    collector = Collector(field, CollectPolicy(every_s=0.0, sample=0.0))
    try:
        for seq, label in enumerate(labels):
            collector.write(result(seq, label))
    finally:
        collector.close()


def image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (90, 20, 200)).save(path)
    return path


def labelled(samples, classes) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    found: dict[str, list[str]] = {}
    for sample in samples:
        found.setdefault(classes[sample.label], []).append(sample.path.parent.name)
    return found


def test_folders_collect_writes_read_back_as_their_classes(tmp_path):
    field = tmp_path / "field"
    collect(field, CLASSES)
    samples, skipped = _extra_samples([field], CLASSES)
    assert skipped == [] and len(samples) == len(CLASSES)
    assert labelled(samples, CLASSES) == {name: [folder_name(name)] for name in CLASSES}


def test_plain_class_name_folders_still_count_beside_collected_ones(tmp_path):
    classes = ["dog's", "Cat", "cat", "猫" * 86, "100%", "a%2Fb"]
    field = tmp_path / "field"
    collect(field, classes)
    for name in classes:  # a person's own folders, named as the class; "猫" * 86 (258 bytes) cannot be one
        if len(name.encode()) <= 255 and name != folder_name(name):
            image(field / name / "by-hand.png")
    samples, skipped = _extra_samples([field], classes)
    found = labelled(samples, classes)
    assert skipped == [] and sorted(found) == sorted(classes)
    assert sorted(found["Cat"]) == sorted(["Cat", folder_name("Cat")]) and found["cat"] == ["cat"]
    assert sorted(found["a%2Fb"]) == sorted(["a%2Fb", folder_name("a%2Fb")])


def test_unlabelled_frames_must_be_sorted_before_training(tmp_path):
    field = tmp_path / "field"
    collect(field, [None, "cat"])
    with pytest.raises(DataError, match=rf"class folder\(s\) \['{UNLABELLED}'\] that the data does not have"):
        _extra_samples([field], ["cat", "dog"])


def test_a_folder_that_is_two_classes_is_one_clear_error(tmp_path):
    field = tmp_path / "field"
    image(field / "a%3Ab" / "x.png")  # the class "a%3Ab" by its name, "a:b" as collect would name that one's folder
    with pytest.raises(
        DataError,
        match=r"--extra-data .*: the folder 'a%3Ab' is the class 'a%3Ab' by its name but "
        r"the class 'a:b' as edgecls run --collect names folders; rename it",
    ):
        _extra_samples([field], ["a:b", "a%3Ab"])


def test_a_class_folder_linked_to_the_root_is_not_walked(tmp_path, monkeypatch):
    field = tmp_path / "field"
    image(field / "dog" / "a.png")
    outside = image(tmp_path / "outside" / "b.png").parent
    (field / "cat").symlink_to("/")
    (field / "dog" / "all").symlink_to("/")
    (field / "dog" / "up").symlink_to("../../outside")
    (field / "dog" / "b.png").symlink_to(outside / "b.png")
    (field / "root.jpg").symlink_to("/etc/hostname")
    listed = []
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path=".": listed.append(Path(path)) or real_scandir(path))
    samples, skipped = _extra_samples([field], ["cat", "dog"])
    assert [s.path for s in samples] == [field / "dog" / "a.png"]
    assert all(path.resolve().is_relative_to(field.resolve()) for path in listed) and len(listed) == 2
    reasons = {Path(s.path).relative_to(field).as_posix(): s.reason for s in skipped}
    assert reasons == {
        "cat": f"a link out of {field} (to /); not followed",
        "dog/all": f"a link out of {field} (to /); not followed",
        "dog/up": f"a link out of {field} (to {outside}); not followed",
        "dog/b.png": f"a link out of {field} (to {outside / 'b.png'}); not followed",
        "root.jpg": f"a link out of {field} (to {os.path.realpath('/etc/hostname')}); not followed",
    }


def test_links_inside_the_folder_are_followed_and_a_loop_is_named_once(tmp_path):
    field = tmp_path / "field"
    image(field / "dog" / "a.png")
    image(field / "dog" / "deep" / "b.png")
    (field / "cat").mkdir()
    (field / "cat" / "same-as-dog").symlink_to("../dog")  # inside the folder: followed
    (field / "dog" / "deep" / "again").symlink_to("../..")  # back to the top: a loop
    (field / "dog" / "self").symlink_to(".")
    (field / "dog" / "loop.jpg").symlink_to("loop.jpg")
    (field / "dog" / "gone.jpg").symlink_to("nowhere.jpg")
    os.mkfifo(field / "dog" / "pipe.png")
    samples, skipped = _extra_samples([field], ["cat", "dog"])
    names = sorted((["cat", "dog"][s.label], s.path.relative_to(field).as_posix()) for s in samples)
    assert names == [
        ("cat", "cat/same-as-dog/a.png"),
        ("cat", "cat/same-as-dog/deep/b.png"),
        ("dog", "dog/a.png"),
        ("dog", "dog/deep/b.png"),
    ]
    reasons = sorted((Path(s.path).relative_to(field).as_posix(), s.reason) for s in skipped)
    loop = "a link to a folder that is walked already (a loop); not followed"
    assert reasons == [  # each once, though the linked folder is walked under two names
        ("cat/same-as-dog/deep/again", loop),
        ("cat/same-as-dog/gone.jpg", "a symlink loop or broken link"),
        ("cat/same-as-dog/loop.jpg", "a symlink loop or broken link"),
        ("cat/same-as-dog/pipe.png", "not a regular file (a FIFO?)"),
        ("cat/same-as-dog/self", loop),
    ]


def test_an_unreadable_folder_is_named_once_and_the_rest_is_used(tmp_path, monkeypatch):
    field = tmp_path / "field"
    image(field / "dog" / "a.png")
    locked = image(field / "dog" / "locked" / "b.png").parent
    locked.chmod(0)
    try:
        if os.geteuid() == 0:  # root reads anything: the folder refuses the way it would refuse another user
            real_scandir = os.scandir

            def scandir(path="."):  # type: ignore[no-untyped-def]
                if Path(path) == locked:
                    raise PermissionError(13, "Permission denied", str(path))
                return real_scandir(path)

            monkeypatch.setattr(os, "scandir", scandir)
        samples, skipped = _extra_samples([field], ["cat", "dog"])
    finally:
        locked.chmod(0o755)
    assert [s.path for s in samples] == [field / "dog" / "a.png"]
    assert [(s.path, s.reason) for s in skipped] == [(str(locked), "cannot be read (Permission denied)")]


def test_scan_with_hostile_extra_data_names_each_problem_once_without_a_traceback(tmp_path):
    data = tmp_path / "data"
    for name in ("cat", "dog's"):
        for i in range(5):
            image(data / name / f"{i}.png")
    field = tmp_path / "field"
    collect(field, ["dog's", "cat"])
    (field / folder_name("cat") / "everything").symlink_to("/")
    (field / "stray.txt").write_text("notes")
    (field / "dog's" / "broken.jpg").write_bytes(b"not a jpeg")
    dataset = scan(data, input_size=(8, 8), channels=3, extra=[field])
    assert dataset.extra == {"cat": 1, "dog's": 1}
    reasons = sorted((Path(s.path).relative_to(field).as_posix(), s.reason.split(";")[0]) for s in dataset.skipped)
    assert [path for path, _ in reasons] == ["cat/everything", "dog's/broken.jpg", "stray.txt"]
    assert reasons[0][1] == f"a link out of {field} (to /)" and reasons[2][1] == "not inside a class folder"
