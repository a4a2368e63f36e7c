"""Datasets for training: scan folder-per-class or pre-split folders, decode once, split stratified, report.

Images are decoded and resized by the device runtime's own code (edgecls.model.images + edgecls.model.preprocess), so the float
model trains on, and the int8 model is evaluated on, exactly the pixels the device will feed. Unreadable files are
skipped and listed, never a crash.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecls.errors import DataError
from edgecls.model.images import IMAGE_SUFFIXES, decode_image
from edgecls.model.preprocess import InputSpec, PreprocessConfig, Preprocessor

from .cache import ImageCache, Item, concat, decode_in_memory, rows_of

SPLIT_NAMES = ("train", "val", "test")
MIN_IMAGES_PER_CLASS = 5  # what a 70/15/15 split needs to put at least one image in each part


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass
class Dataset:
    """A scanned, decoded and split dataset. ``images[split]`` is uint8 N x H x W x C at the model's input size: a
    numpy array, or (from the decoded-image cache) an `edgecls.convert.cache.ImageStore` that reads rows from disk
    when indexed, so that memory does not grow with the number of images."""

    root: Path
    classes: tuple[str, ...]
    samples: dict[str, list[Sample]]
    images: dict[str, Any]
    skipped: list[Skipped]
    presplit: bool
    test_source: str  # "test": a held-out split; "val": pre-split data without test/, evaluated on val/
    seed: int
    fingerprint: str
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    extra: dict[str, int] = field(default_factory=dict)  # --extra-data images added to train/, per class
    cache: dict[str, str] = field(default_factory=dict)  # per listing: "hit", "built", "off" or "fallback: why"

    def labels(self, split: str) -> np.ndarray:
        return np.array([s.label for s in self.samples[split]], dtype=np.int64)

    def counts(self, split: str) -> dict[str, int]:
        found = np.bincount(self.labels(split), minlength=len(self.classes)) if self.samples[split] else []
        return {name: int(n) for name, n in zip(self.classes, found)}

    def split_sizes(self) -> dict[str, int]:
        return {name: len(self.samples[name]) for name in SPLIT_NAMES}

    def imbalance(self) -> float:
        """Largest over smallest class count in the training split (1.0 = balanced)."""
        counts = [n for n in self.counts("train").values()]
        return max(counts) / max(1, min(counts))

    def class_weights(self) -> dict[int, float]:
        """Weights n / (k * n_c) that give every class the same total weight in training."""
        counts = self.counts("train")
        total, k = sum(counts.values()), len(counts)
        return {i: total / (k * max(1, counts[name])) for i, name in enumerate(self.classes)}


ProgressFn = Callable[[int, int], None]


def list_class_folders(root: Path) -> tuple[list[str], dict[str, list[Path]], list[Skipped]]:
    """Classes (sorted) and their image files, found recursively; stray and non-image files are skipped."""
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}; expected DATA_DIR/<class>/*.jpg")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    skipped = [
        Skipped(str(p), "not inside a class folder")
        for p in sorted(root.iterdir())
        if p.is_file() and not p.name.startswith(".")
    ]
    files: dict[str, list[Path]] = {}
    for name in classes:
        found = []
        for path, entry in _walk(root / name):
            try:
                is_file = entry.is_file()  # follows a link to a file, as the decoder will
            except OSError:
                is_file = False
            suffix = os.path.splitext(entry.name)[1].lower()
            if not is_file:
                # a symlink loop, a broken link or a FIFO among the images is named
                if suffix in IMAGE_SUFFIXES:
                    why = "a symlink loop or broken link" if entry.is_symlink() else "not a regular file (a FIFO?)"
                    skipped.append(Skipped(str(path), why))
                continue
            if suffix == ".json":  # a sidecar (edgecls run --collect writes one beside each frame)
                continue
            if suffix not in IMAGE_SUFFIXES:
                skipped.append(Skipped(str(path), f"not an image file (suffix {suffix or 'none'})"))
            elif entry.stat().st_size == 0:
                skipped.append(Skipped(str(path), "empty file"))
            else:
                found.append(path)
        files[name] = found
    return classes, files, skipped


def _walk(folder: Path) -> Iterator[tuple[Path, os.DirEntry[str]]]:
    """Every entry under ``folder`` but hidden ones (names starting with "."), depth first in name order (the order
    of sorted paths), without descending into linked folders; one directory listing per folder and no stat per
    entry (the listing says what is a folder), so a large dataset is listed in a fraction of a second."""
    try:
        with os.scandir(folder) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        path = folder / entry.name
        yield path, entry
        try:
            descend = entry.is_dir(follow_symlinks=False)
        except OSError:
            descend = False
        if descend:
            yield from _walk(path)


def scan(
    root: str | os.PathLike[str],
    *,
    input_size: tuple[int, int],
    channels: int,
    seed: int = 0,
    split: Sequence[float] = (0.7, 0.15, 0.15),
    preprocess: PreprocessConfig | None = None,
    workers: int | None = None,
    progress: ProgressFn | None = None,
    extra: Sequence[str | os.PathLike[str]] = (),
    cache: ImageCache | None = None,
    warn: Callable[[str], None] | None = None,
) -> Dataset:
    """Scan, decode (in parallel) and split a dataset; raise DataError when it cannot be trained on.

    ``cache``: keep the decoded images on disk (edgecls.convert.cache) and read them from there, so a second run
    decodes nothing and memory does not grow with the number of images; None decodes into memory. ``warn`` hears
    why the cache could not be used (the run goes on without it).

    ``extra``: more folder-per-class images (frames collected on a device with `edgecls run --collect` and sorted
    by a person), added to the training split only, so the validation and test images stay those of ``root`` and
    runs with and without them compare on the same test. Their classes must be classes of ``root``; empty class
    folders are ignored."""
    root_path = Path(root)
    if not root_path.is_dir():
        raise DataError(
            f"dataset folder not found: {root_path}; expected DATA_DIR/<class>/*.jpg or train/ val/ [test/]"
        )
    _check_split(split)
    subdirs = {p.name.lower(): p for p in root_path.iterdir() if p.is_dir()}
    presplit = "train" in subdirs and "val" in subdirs
    config = preprocess or PreprocessConfig()
    extra_roots = [Path(e) for e in extra]
    classes, candidates, skipped = _listings(root_path, subdirs if presplit else None, extra_roots)
    roots = {
        "all": root_path,
        "~extra": extra_roots[0] if extra_roots else root_path,
        **{name: subdirs[name] for name in SPLIT_NAMES if name in subdirs},
    }
    decode = functools.partial(
        _decode_all,
        input_size=input_size,
        channels=channels,
        config=config,
        workers=workers,
        cache=cache,
        warn=warn or (lambda message: None),
    )
    decoded, how, unreadable, fingerprint = _decode_listings(candidates, roots, root_path, decode, progress)
    skipped.extend(unreadable)
    extra_samples, extra_images = decoded.pop("~extra", ([], None))
    if presplit:
        samples_by_split, images_by_split, test_source = _given_splits(decoded, classes)
    else:
        samples_by_split, images_by_split = _stratified_splits(decoded["all"], classes, root_path, split, seed)
        test_source = "test"
    if extra_samples:
        samples_by_split["train"] = samples_by_split["train"] + extra_samples
        images_by_split["train"] = concat([images_by_split["train"], extra_images])
    extra_counts = {classes[label]: n for label, n in sorted(Counter(s.label for s in extra_samples).items())}
    return Dataset(
        root=root_path,
        classes=tuple(classes),
        samples=samples_by_split,
        images=images_by_split,
        skipped=skipped,
        presplit=presplit,
        test_source=test_source,
        seed=seed,
        fingerprint=fingerprint,
        preprocess=config,
        extra=extra_counts,
        cache=dict(how),
    )


def _listings(
    root: Path, splits: dict[str, Path] | None, extra_roots: list[Path]
) -> tuple[list[str], dict[str, list[Sample]], list[Skipped]]:
    """The classes, the files to decode under a name each ("all" of a folder-per-class ``root``, or "train", "val"
    and "test" of a pre-split one, whose subfolders are ``splits``; "~extra" for the --extra-data folders), and the
    entries skipped while listing."""
    if splits is not None:
        parts = {name: list_class_folders(splits[name]) for name in SPLIT_NAMES if name in splits}
        classes = parts["train"][0]
        for name, (names, _, _) in parts.items():
            if names != classes:
                raise DataError(
                    f"{splits[name]} has classes {names} but train/ has {classes}; every split needs the same class folders"
                )
        candidates = {name: _flatten(files, classes) for name, (_, files, _) in parts.items()}
        skipped = [s for _, _, sk in parts.values() for s in sk]
    else:
        classes, files, skipped = list_class_folders(root)
        candidates = {"all": _flatten(files, classes)}
    _check_classes(root, classes, candidates)
    if extra_roots:
        candidates["~extra"], extra_skipped = _extra_samples(extra_roots, classes)
        skipped.extend(extra_skipped)
    return classes, candidates, skipped


def _decode_listings(
    candidates: dict[str, list[Sample]],
    roots: dict[str, Path],
    root: Path,
    decode: Callable[..., tuple[list[Sample], Any, list[Skipped], list[str], str]],
    progress: ProgressFn | None,
) -> tuple[dict[str, tuple[list[Sample], Any]], dict[str, str], list[Skipped], str]:
    """Each listing decoded (`_decode_all`) in name order, under one progress count: its samples and images, how the
    cache served it, the files that did not decode, and the dataset's fingerprint (every decoded file's listing,
    path under ``root`` and content hash)."""
    decoded: dict[str, tuple[list[Sample], Any]] = {}
    how: dict[str, str] = {}
    skipped: list[Skipped] = []
    digest = hashlib.sha256()
    total = sum(len(v) for v in candidates.values())
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress:
            progress(done[0], total)

    prefix = str(root) + os.sep
    for name in sorted(candidates):
        samples, images, bad, hashes, how[name] = decode(candidates[name], name=name, root=roots[name], tick=tick)
        skipped.extend(bad)
        for sample, h in zip(samples, hashes):
            where = str(sample.path)
            digest.update(f"{name}/{where.removeprefix(prefix)}:{h}\n".encode())
        decoded[name] = (samples, images)
    return decoded, how, skipped, digest.hexdigest()[:16]


def _given_splits(
    decoded: dict[str, tuple[list[Sample], Any]], classes: list[str]
) -> tuple[dict[str, list[Sample]], dict[str, Any], str]:
    """The splits of a pre-split dataset as its folders give them, val standing in for a missing test/, and the
    name of the folder the test images came from."""
    samples_by_split = {name: decoded[name][0] for name in decoded}
    images_by_split = {name: decoded[name][1] for name in decoded}
    test_source = "test" if "test" in decoded else "val"
    if "test" not in decoded:
        samples_by_split["test"], images_by_split["test"] = samples_by_split["val"], images_by_split["val"]
    _check_counts(classes, samples_by_split["train"], "train/", minimum=2)
    return samples_by_split, images_by_split, test_source


def _stratified_splits(
    decoded: tuple[list[Sample], Any], classes: list[str], root: Path, split: Sequence[float], seed: int
) -> tuple[dict[str, list[Sample]], dict[str, Any]]:
    """A folder-per-class dataset's decoded images split into train, val and test, each class in proportion."""
    samples, images = decoded
    _check_counts(classes, samples, str(root), minimum=MIN_IMAGES_PER_CLASS)
    index = _stratified_split([s.label for s in samples], split, seed)
    samples_by_split = {name: [samples[i] for i in idx] for name, idx in index.items()}
    images_by_split = {name: rows_of(images, idx) for name, idx in index.items()}
    return samples_by_split, images_by_split


def _extra_samples(roots: list[Path], classes: list[str]) -> tuple[list[Sample], list[Skipped]]:
    """The images of the --extra-data folders, labelled by their class folder: one named as a class, or as `edgecls
    run --collect` names a class's folder (edgecls.sinks.classfolders, which reads `dog's`, `a%2Fb` or a cut name back).
    Links that lead out of a folder are not followed; they and unreadable entries are named once in the skipped list."""
    from edgecls.sinks.classfolders import class_of_folder

    samples: list[Sample] = []
    skipped: list[Skipped] = []
    for root in roots:
        if not root.is_dir():
            raise DataError(f"--extra-data {root}: not a folder; expected EXTRA_DIR/<class>/*.jpg")
        folders, bad = _extra_listing(root)
        try:
            named = {folder: class_of_folder(folder, classes) for folder in folders}
        except DataError as exc:
            raise DataError(f"--extra-data {root}: {exc}") from None
        unknown = [folder for folder, files in folders.items() if files and named[folder] is None]
        if unknown:
            raise DataError(
                f"--extra-data {root} has images in class folder(s) {unknown} that the data does not have "
                f"(classes: {classes}); move them into one of those folders, or add the class to the data"
            )
        skipped.extend(bad)
        samples += [
            Sample(path, classes.index(named[folder]))
            for folder, files in folders.items()
            for path in files
            if named[folder] is not None
        ]
    return samples, skipped


def _extra_listing(root: Path) -> tuple[dict[str, list[Path]], list[Skipped]]:
    """The class folders of an --extra-data folder and the image files under each (sorted), walked without following
    a link out of ``root`` or into a folder walked already; hidden entries and JSON sidecars are passed over."""
    inside = Path(os.path.realpath(root))
    skipped: list[Skipped] = []
    folders: dict[str, list[Path]] = {}
    entries = _extra_entries(root, skipped)
    if entries is None:
        raise DataError(f"--extra-data {root}: cannot be read ({skipped[-1].reason}); check its permissions")
    for path in entries:
        info = _extra_stat(path, root, inside, skipped)
        if info is not None and _is_dir(info):
            folders[path.name] = _extra_images(path, root, inside, skipped)
        elif info is not None:
            skipped.append(Skipped(str(path), "not inside a class folder"))
    return folders, _named_once(skipped)


def _extra_images(folder: Path, root: Path, inside: Path, skipped: list[Skipped]) -> list[Path]:
    found: list[Path] = []
    seen = {_dir_key(inside)}
    stack = [folder]
    while stack:  # a stack, not recursion: a hostile depth is no RecursionError
        current = stack.pop()
        key = _dir_key(current)
        if key in seen:
            skipped.append(Skipped(str(current), "a link to a folder that is walked already (a loop); not followed"))
            continue
        seen.add(key)
        entries = _extra_entries(current, skipped)
        subfolders = []
        for path in entries or []:
            info = _extra_stat(path, root, inside, skipped)
            if info is None:
                continue
            if _is_dir(info):
                subfolders.append(path)
            elif path.suffix.lower() == ".json":  # a sidecar (edgecls run --collect writes one beside each frame)
                continue
            elif path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append(Skipped(str(path), f"not an image file (suffix {path.suffix or 'none'})"))
            elif info.st_size == 0:
                skipped.append(Skipped(str(path), "empty file"))
            else:
                found.append(path)
        stack.extend(reversed(subfolders))
    return sorted(found)


def _extra_entries(folder: Path, skipped: list[Skipped]) -> list[Path] | None:
    """The visible entries of ``folder``, sorted; None (and the folder named in ``skipped``) if it cannot be read."""
    try:
        with os.scandir(folder) as it:
            return sorted(Path(entry.path) for entry in it if not entry.name.startswith("."))
    except OSError as exc:
        skipped.append(Skipped(str(folder), f"cannot be read ({exc.strerror or exc})"))
        return None


def _extra_stat(path: Path, root: Path, inside: Path, skipped: list[Skipped]) -> os.stat_result | None:
    """The status of a folder or regular file to list; None, with the reason in ``skipped``, for a link that leads
    out of ``root`` (never followed), a broken link or loop, or a FIFO or device among the images."""
    import stat

    if path.is_symlink() and not Path(os.path.realpath(path)).is_relative_to(inside):
        skipped.append(Skipped(str(path), f"a link out of {root} (to {os.path.realpath(path)}); not followed"))
        return None
    try:
        info = path.stat()
    except OSError as exc:
        link = path.is_symlink()
        skipped.append(
            Skipped(str(path), "a symlink loop or broken link" if link else f"cannot be read ({exc.strerror})")
        )
        return None
    if stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode):
        return info
    if path.suffix.lower() in IMAGE_SUFFIXES:
        skipped.append(Skipped(str(path), "not a regular file (a FIFO?)"))
    return None


def _named_once(skipped: list[Skipped]) -> list[Skipped]:
    """An entry reached under two names (through a link inside the folder) is named once, under the first."""
    seen: set[str] = set()
    once = []
    for item in skipped:
        where = os.path.join(os.path.realpath(os.path.dirname(item.path)), os.path.basename(item.path))
        if where not in seen:
            seen.add(where)
            once.append(item)
    return once


def _is_dir(info: os.stat_result) -> bool:
    import stat

    return stat.S_ISDIR(info.st_mode)


def _dir_key(folder: Path) -> tuple[int, int]:
    try:
        info = folder.stat()
    except OSError:
        return (-1, -1)
    return info.st_dev, info.st_ino


def _flatten(files: dict[str, list[Path]], classes: list[str]) -> list[Sample]:
    return [Sample(path, label) for label, name in enumerate(classes) for path in files.get(name, [])]


def _check_split(split: Sequence[float]) -> None:
    if len(split) != 3 or any(f < 0 for f in split) or abs(sum(split) - 1.0) > 1e-6 or min(split[1:]) <= 0:
        raise DataError(f"split fractions must be three positive numbers that add up to 1 (received {tuple(split)})")


def _check_classes(root: Path, classes: list[str], candidates: dict[str, list[Sample]]) -> None:
    if not classes:
        raise DataError(f"{root} has no class folders; expected DATA_DIR/<class>/*.jpg (one folder per class)")
    if len(classes) == 1:
        raise DataError(f"{root} has a single class ({classes[0]!r}); a classifier needs at least two class folders")
    pool = candidates.get("train", candidates.get("all", []))
    present = {s.label for s in pool}
    empty = [name for i, name in enumerate(classes) if i not in present]
    if empty:
        raise DataError(f"class folder(s) {empty} under {root} hold no image files; add images or remove the folders")


def _check_counts(classes: list[str], samples: list[Sample], where: str, *, minimum: int) -> None:
    counts = np.bincount([s.label for s in samples], minlength=len(classes))
    few = {classes[i]: int(n) for i, n in enumerate(counts) if n < minimum}
    if few:
        raise DataError(f"too few readable images per class in {where}: {few}; each class needs at least {minimum}")


def _decode_all(
    samples: list[Sample],
    *,
    name: str,
    root: Path,
    input_size: tuple[int, int],
    channels: int,
    config: PreprocessConfig,
    workers: int | None,
    tick: Callable[[], None],
    cache: ImageCache | None,
    warn: Callable[[str], None],
) -> tuple[list[Sample], Any, list[Skipped], list[str], str]:
    """The decoded images of one listing (from the cache when one is given), the samples that decoded, the files
    that did not, the content hashes, and how the cache served ("hit", "built", "off", "fallback: ...")."""
    h, w = input_size
    # A uint8 "model" whose input is the raw pixel: the table is the identity, so this is resize + colour only.
    spec = InputSpec(h, w, channels, "uint8", scale=1.0, zero_point=0)
    identity = PreprocessConfig(
        resize=config.resize, interpolation=config.interpolation, mean=0.0, std=1.0, pad_value=config.pad_value
    )
    preprocessor = Preprocessor(spec, identity)

    def load(path: Path) -> tuple[np.ndarray, str]:
        data = path.read_bytes()
        frame = decode_image(data, name=str(path), grayscale=channels == 1)
        # One shared Preprocessor: its plan cache is a dict, safe to fill from threads under the GIL.
        return preprocessor.to_array(frame), hashlib.sha1(data).hexdigest()[:12]

    items, unreadable = [], []
    for i, sample in enumerate(samples):
        try:
            st = sample.path.stat()
        except OSError as exc:
            unreadable.append(Skipped(str(sample.path), exc.strerror or str(exc)))
            continue
        items.append((i, Item(sample.path, sample.label, st.st_size, st.st_mtime_ns)))
    listing = [item for _, item in items]
    threads = workers or min(8, (os.cpu_count() or 2))
    shape = (h, w, channels)
    for _ in unreadable:
        tick()
    if cache is None:
        result = decode_in_memory(listing, shape, load, threads, tick)
    else:
        settings = {"resize": identity.resize, "interpolation": identity.interpolation, "pad_value": identity.pad_value}
        result = cache.decode(
            name, root, listing, shape=shape, settings=settings, decode=load, workers=threads, tick=tick, warn=warn
        )
    kept = [samples[items[p][0]] for p in result.kept]
    skipped = unreadable + [Skipped(str(listing[p].path), reason) for p, reason in result.failed]
    return kept, result.images, skipped, list(result.hashes), result.cache


def _stratified_split(labels: list[int], split: Sequence[float], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {name: [] for name in SPLIT_NAMES}
    labels_a = np.asarray(labels)
    for label in np.unique(labels_a):
        idx = np.flatnonzero(labels_a == label)
        rng.shuffle(idx)
        n = len(idx)
        n_val = max(1, round(n * split[1]))
        n_test = max(1, round(n * split[2]))
        n_train = n - n_val - n_test
        parts["train"].extend(idx[:n_train])
        parts["val"].extend(idx[n_train : n_train + n_val])
        parts["test"].extend(idx[n_train + n_val :])
    return {name: np.sort(np.asarray(v, dtype=np.int64)) for name, v in parts.items()}


def stratified_sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of about ``n`` items with every class represented in proportion (at least one each)."""
    rng = np.random.default_rng(seed)
    if n >= len(labels):
        return rng.permutation(len(labels))
    picked = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        take = max(1, round(n * len(idx) / len(labels)))
        picked.extend(rng.choice(idx, size=min(take, len(idx)), replace=False))
    return rng.permutation(np.asarray(picked))
