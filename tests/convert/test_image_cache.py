"""The decoded-image cache (edgecls.convert.cache): a warm run decodes nothing and gives the same images; a changed
dataset is decoded again; a killed build, a full disk, a read-only folder and two runs at once never leave or trust
a wrong entry; eviction keeps the cache bounded and spares entries in use; the input pipeline reads from it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, tensorflow_or_skip
from edgecls.convert import data as data_module
from edgecls.convert.cache import ImageCache, ImageStore
from edgecls.convert.data import scan


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    """3 classes of 14 generated 48 px images."""
    from edgecls.live.demo import write_demo_dataset

    return write_demo_dataset(tmp_path / "photos", per_class=14, size=48, classes=("circle", "square", "stripes"))


def _scan(root: Path, cache: ImageCache | None, size: int = 32, **kw):  # type: ignore[no-untyped-def]
    return scan(root, input_size=(size, size), channels=3, seed=0, cache=cache, **kw)


def _same(a, b) -> None:  # type: ignore[no-untyped-def]
    assert a.fingerprint == b.fingerprint
    assert [s.path for s in a.samples["train"]] == [s.path for s in b.samples["train"]]
    for split in ("train", "val", "test"):
        assert np.array_equal(np.asarray(a.images[split][:]), np.asarray(b.images[split][:])), split


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = data_module.decode_image

    def counting(data, *, name, grayscale):  # type: ignore[no-untyped-def]
        calls.append(name)
        return real(data, name=name, grayscale=grayscale)

    monkeypatch.setattr(data_module, "decode_image", counting)
    return calls


def test_a_second_run_decodes_nothing_and_gets_the_same_images(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (photos / "circle" / "broken.jpg").write_bytes(b"not a jpeg")
    reference = _scan(photos, None)
    cache = ImageCache(tmp_path / "cache")
    calls = _count_decodes(monkeypatch)
    cold = _scan(photos, cache)
    assert cold.cache == {"all": "built"} and len(calls) == 43
    calls.clear()
    warm = _scan(photos, cache)
    assert warm.cache == {"all": "hit"} and calls == []
    assert isinstance(warm.images["train"], ImageStore) and isinstance(reference.images["train"], np.ndarray)
    _same(reference, warm)
    assert (
        [s.path for s in warm.skipped] == [s.path for s in reference.skipped] == [str(photos / "circle" / "broken.jpg")]
    )
    # another seed and split reuse the entry: splits are row numbers into it
    calls.clear()
    other = scan(photos, input_size=(32, 32), channels=3, seed=3, split=(0.6, 0.2, 0.2), cache=cache)
    assert other.cache == {"all": "hit"} and calls == []
    _same(scan(photos, input_size=(32, 32), channels=3, seed=3, split=(0.6, 0.2, 0.2)), other)
    # the entry is a plain .npy file of every listed image
    (entry,) = [e for e in cache.entries()]
    assert np.load(cache.directory / entry["key"] / "images.npy", mmap_mode="r").shape == (43, 32, 32, 3)


def test_a_changed_dataset_is_decoded_again_and_its_old_entry_goes(photos: Path, tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache")
    first = _scan(photos, cache).fingerprint  # (the dataset goes at once: an entry in use is never removed)
    changed = photos / "circle" / min(os.listdir(photos / "circle"))
    changed.write_bytes((photos / "stripes" / min(os.listdir(photos / "stripes"))).read_bytes())
    after = _scan(photos, cache)
    assert after.cache == {"all": "built"} and after.fingerprint != first
    _same(_scan(photos, None), after)
    assert len(cache.entries()) == 1  # the entry of the old listing was replaced, not kept beside it
    del after
    (photos / "square" / "extra.png").write_bytes((photos / "square" / min(os.listdir(photos / "square"))).read_bytes())
    assert _scan(photos, cache).cache == {"all": "built"}  # a new file
    assert _scan(photos, cache, size=24).cache == {"all": "built"}  # another input size is another entry
    assert len(cache.entries()) == 2


CHILD = textwrap.dedent("""
    import hashlib, json, sys, time
    from pathlib import Path
    from edgecls.convert import data
    from edgecls.convert.cache import ImageCache
    real = data.decode_image
    def slow(*a, **k):
        time.sleep(float(sys.argv[3]))
        return real(*a, **k)
    data.decode_image = slow
    def progress(done, total):
        if done == 5:
            print("HALFWAY", flush=True)
    d = data.scan(Path(sys.argv[1]), input_size=(32, 32), channels=3, cache=ImageCache(Path(sys.argv[2])),
                  progress=progress, workers=2)
    digest = hashlib.sha256(b"".join(d.images[s][:].tobytes() for s in ("train", "val", "test"))).hexdigest()
    print(json.dumps({"how": d.cache["all"], "digest": digest}), flush=True)
""")


def _child(photos: Path, cache: Path, delay: float) -> subprocess.Popen:  # type: ignore[type-arg]
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(photos), str(cache), str(delay)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _digest(dataset) -> str:  # type: ignore[no-untyped-def]
    import hashlib

    return hashlib.sha256(
        b"".join(np.asarray(dataset.images[s][:]).tobytes() for s in ("train", "val", "test"))
    ).hexdigest()


def test_a_build_killed_halfway_is_never_trusted(photos: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    child = _child(photos, cache_dir, 0.2)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "HALFWAY", child.stderr.read() if child.stderr else ""
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        child.kill()
        child.wait(30)
    leftovers = [p.name for p in cache_dir.iterdir()]
    assert any(name.startswith(".") and name.endswith(".tmp") for name in leftovers), leftovers
    cache = ImageCache(cache_dir)
    assert cache.entries() == []  # half a build is not an entry
    again = _scan(photos, cache)
    assert again.cache == {"all": "built"}
    _same(_scan(photos, None), again)
    assert not [p for p in cache_dir.iterdir() if p.name.endswith(".tmp")]  # the killed build's folder went


def test_two_runs_at_once_decode_the_images_once(photos: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    children = [_child(photos, cache_dir, 0.03) for _ in range(2)]
    try:
        results = []
        for child in children:
            out, err = child.communicate(timeout=300)
            assert child.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for child in children:
            child.kill()
            child.wait(30)
    assert sorted(r["how"] for r in results) == ["built", "hit"], results
    assert results[0]["digest"] == results[1]["digest"] == _digest(_scan(photos, None))
    assert len(ImageCache(cache_dir).entries()) == 1


@pytest.fixture()
def mount_point(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A folder to mount a small file system on (needs root; the suite runs as root in CI)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small or read-only file system needs root")
    point = tmp_path / "mnt"
    point.mkdir()
    mounted: list[Path] = []
    yield point, mounted
    for path in reversed(mounted):
        subprocess.run(["umount", str(path)], check=False)


def _mount(mount_point, *args: str) -> Path:  # type: ignore[no-untyped-def]
    point, mounted = mount_point
    done = subprocess.run(["mount", *args, str(point)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr.strip()}")
    mounted.append(point)
    return point


def test_a_full_disk_falls_back_to_memory_with_one_warning(
    photos: Path,
    mount_point,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    small = _mount(mount_point, "-t", "tmpfs", "-o", "size=96k", "tmpfs")
    reference = _scan(photos, None, size=40)  # 42 images x 4.8 KB: more than 96 KB
    warnings: list[str] = []
    # 1. the space check before decoding
    checked = _scan(photos, ImageCache(small / "cache"), size=40, warn=warnings.append)
    assert len(warnings) == 1 and "MB free" in warnings[0] and "decoding into memory" in warnings[0]
    assert checked.cache["all"].startswith("fallback") and isinstance(checked.images["train"], np.ndarray)
    _same(reference, checked)
    # 2. a disk that fills up while the entry is written (the check passed: the space went to someone else)
    from edgecls.convert import cache as cache_module

    monkeypatch.setattr(cache_module, "_free_bytes", lambda folder: 10**12)
    warnings.clear()
    filled = _scan(photos, ImageCache(small / "cache"), size=40, warn=warnings.append)
    assert len(warnings) == 1 and "the disk is full" in warnings[0], warnings
    _same(reference, filled)
    assert ImageCache(small / "cache").entries() == []
    assert not [p for p in (small / "cache").iterdir() if not p.name.endswith(".lock")]  # no half entry left


def test_a_read_only_cache_folder_falls_back_with_one_warning(
    photos: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
    mount_point,
) -> None:
    source = tmp_path / "ro-source"
    source.mkdir()
    point = _mount(mount_point, "--bind", str(source))
    done = subprocess.run(["mount", "-o", "remount,bind,ro", str(point)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot remount read-only here: {done.stderr.strip()}")
    warnings: list[str] = []
    result = _scan(photos, ImageCache(point / "cache"), warn=warnings.append)
    assert len(warnings) == 1 and "cannot be used" in warnings[0] and "Read-only" in warnings[0], warnings
    _same(_scan(photos, None), result)
    # a cache folder that is a file: the same, one warning
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    warnings.clear()
    _same(_scan(photos, None), _scan(photos, ImageCache(not_a_folder / "cache"), warn=warnings.append))
    assert len(warnings) == 1


def test_eviction_keeps_the_cache_bounded_and_spares_entries_in_use(photos: Path, tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    in_use = _scan(photos, ImageCache(directory), size=32)  # holds its entry open (and locked) while it lives
    time.sleep(0.05)
    _scan(photos, ImageCache(directory), size=24)
    sizes = {e["shape"][0]: e["bytes"] for e in ImageCache(directory).entries()}
    limit = sizes[32] + 42 * 40 * 40 * 3 + 4096  # room for the one in use and a 40 px entry, not for the 24 px too
    _scan(photos, ImageCache(directory, max_bytes=limit), size=40)
    kept = sorted(e["shape"][0] for e in ImageCache(directory).entries())
    assert kept == [32, 40]  # the least recently used (32 px) is in use: the 24 px one went instead
    assert np.asarray(in_use.images["train"][:5]).shape == (5, 32, 32, 3)
    del in_use
    import gc

    gc.collect()
    removed, freed, busy = ImageCache(directory).clear()
    assert removed == 2 and freed > 0 and busy == [] and ImageCache(directory).entries() == []


def test_the_cache_command_lists_and_clears(photos: Path, tmp_path: Path) -> None:
    from conftest import invoke

    directory = tmp_path / "cache"
    _scan(photos, ImageCache(directory))
    listed = invoke("cache", "list", "--cache-dir", directory, "--json")
    assert listed.exit_code == 0, listed.output
    (entry,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert entry["images"] == 42 and entry["shape"] == [32, 32, 3] and entry["root"] == str(photos.resolve())
    text = invoke("cache", "list", "--cache-dir", directory)
    assert "1 entries" in text.stdout and entry["key"] in text.stdout
    missing = invoke("cache", "clear", "nosuchkey", "--cache-dir", directory)
    assert missing.exit_code == 1 and "no cache entry 'nosuchkey'" in missing.stderr
    cleared = invoke("cache", "clear", "--cache-dir", directory)
    assert cleared.exit_code == 0 and "removed 1 entries" in cleared.stdout
    assert ImageCache(directory).entries() == []


def test_the_input_pipeline_streams_from_the_cache_with_labels_in_step(tmp_path: Path) -> None:
    """Images whose every pixel is 40 x their label: after shuffling, batching and sharding, each image still comes
    with its own label."""
    tensorflow_or_skip()
    from edgecls.convert.cache import rows_of
    from edgecls.convert.training import TrainConfig, input_pipeline, targets
    from PIL import Image

    root = tmp_path / "flat"
    for label in range(3):
        (root / f"c{label}").mkdir(parents=True)
        for i in range(20):
            Image.new("RGB", (16, 16), (40 * label,) * 3).save(root / f"c{label}" / f"{i}.png")
    dataset = scan(root, input_size=(16, 16), channels=3, cache=ImageCache(tmp_path / "cache"))
    x, labels = dataset.images["train"], dataset.labels("train")
    assert isinstance(x, ImageStore)
    config = TrainConfig(augment=0.0, batch_size=7)
    seen = 0
    for images, y in input_pipeline(x, targets(labels, 3, False), config, train=True):
        assert np.array_equal(images.numpy()[:, 0, 0, 0], 40.0 * np.argmax(y.numpy(), axis=1))
        seen += len(images)
    assert seen == len(labels)
    shard = input_pipeline(
        rows_of(x, slice(1, None, 2)), targets(labels, 3, False)[1::2], config, train=True, endless=True
    )
    for images, y in shard.take(5):
        assert len(images) == 7
        assert np.array_equal(images.numpy()[:, 0, 0, 0], 40.0 * np.argmax(y.numpy(), axis=1))


def test_training_sees_the_same_batches_from_the_cache_as_from_memory(photos: Path, tmp_path: Path) -> None:
    """The same seed gives the same shuffled batches, image for image, whether the split is an array in memory (as
    before the cache, and with --no-cache) or rows read from the cache: the cache changes where the pixels come
    from, not what a model learns from."""
    tensorflow_or_skip()
    from edgecls.convert.training import TrainConfig, input_pipeline, targets

    in_memory = _scan(photos, None)
    cached = _scan(photos, ImageCache(tmp_path / "cache"))
    config = TrainConfig(augment=0.0, batch_size=5, seed=4)
    y = targets(in_memory.labels("train"), 3, False)
    for epoch_a, epoch_b in zip(
        *(input_pipeline(d.images["train"], y, config, train=True).repeat(2) for d in (in_memory, cached))
    ):
        assert np.array_equal(epoch_a[0].numpy(), epoch_b[0].numpy())
        assert np.array_equal(epoch_a[1].numpy(), epoch_b[1].numpy())
