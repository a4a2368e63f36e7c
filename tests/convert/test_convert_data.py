"""Dataset scanning, decoding and splitting for the converter (no TensorFlow needed)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from edgecls.convert.data import scan, stratified_sample
from PIL import Image

from edgecls.errors import DataError
from edgecls.live.demo import write_demo_dataset


@pytest.fixture()
def shapes(tmp_path):
    return write_demo_dataset(tmp_path / "shapes", per_class=10, size=24, classes=("star", "circle", "square"))


def test_classes_sorted_and_stratified_seeded_split(shapes):
    ds = scan(shapes, input_size=(16, 16), channels=3, seed=1)
    assert ds.classes == ("circle", "square", "star")
    # 10 per class: 15% of 10 rounds to 2 for val and for test, 6 stay for training
    assert ds.split_sizes() == {"train": 18, "val": 6, "test": 6}
    for split in ("train", "val", "test"):
        assert set(ds.labels(split)) == {0, 1, 2}  # every class in every part
        assert ds.images[split].shape[1:] == (16, 16, 3) and ds.images[split].dtype == np.uint8
    again = scan(shapes, input_size=(16, 16), channels=3, seed=1)
    other = scan(shapes, input_size=(16, 16), channels=3, seed=2)
    names = lambda d: [s.path.name for s in d.samples["test"]]
    assert names(again) == names(ds) and names(other) != names(ds)
    assert ds.fingerprint == again.fingerprint and ds.imbalance() == 1.0
    all_paths = [s.path for split in ("train", "val", "test") for s in ds.samples[split]]
    assert len(all_paths) == len(set(all_paths)) == 30


def test_bad_files_are_skipped_and_listed(shapes):
    (shapes / "circle" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (shapes / "circle" / "empty.png").write_bytes(b"")
    (shapes / "circle" / "notes.txt").write_text("hello")
    (shapes / "stray.jpg").write_bytes(b"x")
    nested = shapes / "square" / "more" / "deeper"
    nested.mkdir(parents=True)
    Image.new("RGB", (20, 20), (10, 20, 30)).save(nested / "nested.png")
    ds = scan(shapes, input_size=(16, 16), channels=3)
    reasons = {p.split("/")[-1]: r for p, r in ((s.path, s.reason) for s in ds.skipped)}
    assert "corrupt or truncated" in reasons["broken.jpg"] or "not an image" in reasons["broken.jpg"]
    assert reasons["empty.png"] == "empty file"
    assert "not an image file" in reasons["notes.txt"]
    assert reasons["stray.jpg"] == "not inside a class folder"
    assert sum(ds.split_sizes().values()) == 31  # the nested image counts for 'square'


def test_image_modes_are_converted(tmp_path):
    root = tmp_path / "modes"
    for label, colour in (("a", (250, 10, 10)), ("b", (10, 10, 250))):
        folder = root / label
        folder.mkdir(parents=True)
        base = Image.new("RGB", (20, 20), colour)
        base.save(folder / "rgb.jpg")
        base.convert("L").save(folder / "gray.png")
        base.convert("RGBA").save(folder / "rgba.png")
        base.convert("P").save(folder / "palette.png")
        Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(folder / "sixteen.png")
    ds = scan(root, input_size=(8, 8), channels=3)
    assert ds.skipped == [] and sum(ds.split_sizes().values()) == 10
    gray = scan(root, input_size=(8, 8), channels=1)
    assert gray.images["train"].shape[-1] == 1


def test_presplit_without_test_uses_val(tmp_path, shapes):
    root = tmp_path / "presplit"
    for split in ("train", "val"):
        for cls in ("circle", "star"):
            dest = root / split / cls
            dest.mkdir(parents=True)
            for f in sorted((shapes / cls).iterdir())[: 6 if split == "train" else 3]:
                shutil.copy(f, dest / f.name)
    ds = scan(root, input_size=(16, 16), channels=3)
    assert ds.presplit and ds.test_source == "val" and ds.split_sizes() == {"train": 12, "val": 6, "test": 6}
    (root / "test" / "circle").mkdir(parents=True)
    (root / "test" / "star").mkdir(parents=True)
    for cls in ("circle", "star"):
        shutil.copy(max((shapes / cls).iterdir()), root / "test" / cls / "t.png")
    ds = scan(root, input_size=(16, 16), channels=3)
    assert ds.test_source == "test" and ds.split_sizes()["test"] == 2
    (root / "val" / "square").mkdir()
    with pytest.raises(DataError, match="same class folders"):
        scan(root, input_size=(16, 16), channels=3)


def test_unusable_datasets_are_clear_errors(tmp_path, shapes):
    with pytest.raises(DataError, match="not found"):
        scan(tmp_path / "nope", input_size=(16, 16), channels=3)
    (shapes / "empty_class").mkdir()
    with pytest.raises(DataError, match=r"\['empty_class'\].*hold no image files"):
        scan(shapes, input_size=(16, 16), channels=3)
    single = tmp_path / "single"
    shutil.copytree(shapes / "star", single / "star")
    with pytest.raises(DataError, match="single class"):
        scan(single, input_size=(16, 16), channels=3)
    few = tmp_path / "few"
    shutil.copytree(shapes / "star", few / "star")
    (few / "circle").mkdir()
    for f in sorted((shapes / "circle").iterdir())[:3]:
        shutil.copy(f, few / "circle" / f.name)
    with pytest.raises(DataError, match=r"too few readable images per class.*'circle': 3"):
        scan(few, input_size=(16, 16), channels=3)
    with pytest.raises(DataError, match="split fractions"):
        scan(shapes, input_size=(16, 16), channels=3, split=(0.9, 0.2, 0.1))


def test_imbalance_and_class_weights(tmp_path):
    root = write_demo_dataset(tmp_path / "imb", per_class=30, size=16, classes=("circle", "star"))
    for f in sorted((root / "star").iterdir())[10:]:
        f.unlink()
    ds = scan(root, input_size=(16, 16), channels=3)
    assert ds.counts("train") == {"circle": 22, "star": 6}
    assert ds.imbalance() == pytest.approx(22 / 6)
    w = ds.class_weights()
    assert w[1] > w[0] and w[0] * ds.counts("train")["circle"] == pytest.approx(w[1] * ds.counts("train")["star"])


def test_stratified_sample_keeps_every_class():
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    idx = stratified_sample(labels, 20, seed=0)
    assert set(labels[idx]) == {0, 1, 2} and 18 <= len(idx) <= 22
