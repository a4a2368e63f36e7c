"""The decoded-image cache: a dataset's images decoded once, at one input size, into a file on disk.

A cache entry holds every image of one listing (a dataset folder, a split folder of a pre-split dataset, or an
--extra-data folder) as one uint8 ``N x H x W x C`` ``.npy`` array, decoded by the device's own code (see
`decode_into`), with an ``index.json`` beside it: each file's path, label, content hash, and why a file could not be
decoded. Splits are row numbers into it, so another ``--seed`` or ``--split`` reuses the entry.

Rows are read with ``pread`` (`ImageStore`), not memory-mapped: only the batch being read is in the process's
memory, whatever the number of images, and the operating system's page cache keeps a warm entry fast.

The key is a hash of the listing (relative paths, sizes, modification times), the input size, the colour and the
preprocessing, so a changed file or setting is a new entry; an older entry of the same folder and settings is
removed when its successor is written. An entry is built in a temporary folder and renamed into place whole: a scan
killed halfway, a full disk or a crash never leaves an entry that a later run trusts. Entries are locked while in
use (``flock``): two runs that need the same entry decode it once, and eviction (least recently used first, down to
``max_bytes``) never removes an entry another run is reading.

This module never imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecls import __version__
from edgecls.errors import DataError

log = logging.getLogger("edgecls.convert")

CACHE_FORMAT = 1
DEFAULT_MAX_BYTES = 20 * 1024**3
INDEX = "index.json"
IMAGES = "images.npy"
USED = "used"  # its modification time is the entry's last use
HEADER_BYTES = 128  # the .npy header we write (format 1.0, padded to 128 bytes)


def default_cache_dir() -> Path:
    """``$EDGECLS_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgecls/data``, else ``~/.cache/edgecls/data``."""
    explicit = os.environ.get("EDGECLS_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgecls" / "data"


def default_max_bytes() -> int:
    """``$EDGECLS_CACHE_MAX_GB`` (a number of GiB), else 20 GiB."""
    raw = os.environ.get("EDGECLS_CACHE_MAX_GB")
    if not raw:
        return DEFAULT_MAX_BYTES
    try:
        value = float(raw)
    except ValueError:
        raise DataError(f"EDGECLS_CACHE_MAX_GB must be a number of GiB (received {raw!r})") from None
    if not value > 0:
        raise DataError(f"EDGECLS_CACHE_MAX_GB must be more than 0 (received {raw!r})")
    return int(value * 1024**3)


# ------------------------------------------------------------------------------------------------------------------
# Reading: an array of images on disk that reads only the rows asked for


class _OpenFile:
    """One cache file, opened for reading when the store is made, and a shared lock on its entry while any store
    reads it (`share`): eviction skips an entry in use, and a file removed anyway stays readable through the open
    descriptor."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.lock_fd = -1

    def share(self, lock: Path) -> None:
        try:
            self.lock_fd = os.open(lock, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            fcntl.flock(self.lock_fd, fcntl.LOCK_SH)
        except OSError:  # a read-only cache without the lock file: read anyway
            pass

    def close(self) -> None:
        for fd in (self.fd, self.lock_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.lock_fd = -1

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()

    def __reduce__(self) -> Any:  # a copy in another process opens the file again
        return (_OpenFile, (self.path,))


class ImageStore:
    """``N x H x W x C`` uint8 images in one or more ``.npy`` files, read by row.

    It answers what the converter asks of an image array, without holding the images in memory: ``len``,
    ``shape``, ``dtype``, and indexing by an int, a slice or an array of ints, which returns a numpy array of just
    those rows. `subset` and `concat` make new stores over the same open files without reading them."""

    def __init__(self, files: Sequence[_OpenFile], rows: np.ndarray, shape: tuple[int, ...]) -> None:
        self._files = tuple(files)
        self._rows = np.asarray(rows, dtype=np.int64).reshape(-1, 2)  # (file number, row in that file)
        self._image_shape = tuple(int(v) for v in shape)
        self._row_bytes = int(np.prod(self._image_shape))

    @classmethod
    def open(cls, path: Path, shape: tuple[int, ...], rows: np.ndarray) -> ImageStore:
        """The rows ``rows`` of the .npy file ``path`` (written by this module)."""
        rows = np.asarray(rows, dtype=np.int64)
        return cls([_OpenFile(path)], np.stack([np.zeros_like(rows), rows], axis=1), shape)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self._rows), *self._image_shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    @property
    def nbytes(self) -> int:
        return len(self._rows) * self._row_bytes

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return f"ImageStore(shape={self.shape}, files={[str(f.path) for f in self._files]})"

    def hold(self, lock: Path) -> None:
        """Keep a shared lock on the entry's lock file while this store (or one made from it) lives."""
        for file in self._files:
            file.share(lock)

    def subset(self, index: Any) -> ImageStore:
        """The store of the rows ``index`` picks (a slice or an array of ints), read later, when asked."""
        return ImageStore(self._files, self._rows[index], self._image_shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self.take(np.array([index]))[0]
        if isinstance(index, slice):
            return self.take(np.arange(len(self._rows))[index])
        return self.take(np.asarray(index))

    def take(self, indices: np.ndarray) -> np.ndarray:
        """The rows ``indices`` (in that order) as a new uint8 array; runs of consecutive rows are read at once."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((len(indices), *self._image_shape), dtype=np.uint8)
        if not len(indices):
            return out
        if indices.min() < -len(self._rows) or indices.max() >= len(self._rows):
            raise IndexError(f"row {int(indices.max())} is out of range for {len(self._rows)} images")
        where = self._rows[indices]
        flat = out.reshape(len(indices), -1)
        start = 0
        while start < len(where):
            stop = start + 1
            file_no, row = where[start]
            while stop < len(where) and where[stop, 0] == file_no and where[stop, 1] == row + (stop - start):
                stop += 1
            self._read(self._files[int(file_no)], int(row), flat[start:stop])
            start = stop
        return out

    def batches(self, batch_size: int = 256) -> Iterator[np.ndarray]:
        """The images in order, ``batch_size`` at a time."""
        for start in range(0, len(self), batch_size):
            yield self.take(np.arange(start, min(start + batch_size, len(self))))

    def _read(self, file: _OpenFile, row: int, into: np.ndarray) -> None:
        view = memoryview(into).cast("B")
        offset = HEADER_BYTES + row * self._row_bytes
        done = 0
        while done < len(view):
            n = os.preadv(file.fd, [view[done:]], offset + done)
            if n <= 0:
                raise DataError(
                    f"the image cache file {file.path} is shorter than its index says; "
                    "clear it with `edgecls cache clear` and run again"
                )
            done += n


def cache_summary(how: dict[str, str]) -> str:
    """How the cache served a scan's listings (`Dataset.cache`, report.json's ``image_cache``), in a few words."""
    values = set(how.values())
    if values == {"hit"}:
        return "decoded images read from the cache (hit)"
    if values <= {"hit", "built"}:
        return "images decoded into the cache (a next run reads them from there)"
    if values == {"off"}:
        return "images decoded into memory (no cache)"
    return "images decoded into memory (the cache could not be used)"


def concat(parts: Sequence[Any]) -> Any:
    """Images of several arrays or stores, one after the other: a numpy array when every part is one, else a store
    (no image is read)."""
    if all(isinstance(p, np.ndarray) for p in parts):
        return np.concatenate(parts)
    if not all(isinstance(p, ImageStore) for p in parts):
        raise TypeError("cannot join an in-memory image array with a cached image store; decode both the same way")
    stores: list[ImageStore] = list(parts)
    files: list[_OpenFile] = []
    rows = []
    for store in stores:
        rows.append(store._rows + np.array([len(files), 0]))
        files.extend(store._files)
    return ImageStore(files, np.concatenate(rows), stores[0]._image_shape)


def rows_of(images: Any, index: Any) -> Any:
    """``images[index]`` that keeps a store a store (nothing read) and an array an array."""
    return images.subset(index) if isinstance(images, ImageStore) else images[index]


# ------------------------------------------------------------------------------------------------------------------
# Writing: one listing decoded into a new entry


@dataclass(frozen=True)
class Item:
    """One file of a listing: where it is, its class, and its size and modification time (part of the key)."""

    path: Path
    label: int
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Decoded:
    """What decoding a listing gave: ``images`` (an `ImageStore`, or an array when uncached) for the items that
    decoded, in order, their positions in the listing, their content hashes, and (position, reason) for the rest."""

    images: Any
    kept: tuple[int, ...]
    hashes: tuple[str, ...]
    failed: tuple[tuple[int, str], ...]
    cache: str  # "hit", "built", "off" (no cache asked for), or "fallback: <why>"


DecodeFn = Callable[[Path], "tuple[np.ndarray, str]"]  # a file -> (H x W x C uint8 image, content hash); raises


@dataclass(frozen=True)
class ImageCache:
    """Where decoded images are kept and how much room they may take (see the module's description)."""

    directory: Path
    max_bytes: int = DEFAULT_MAX_BYTES

    def decode(
        self,
        name: str,
        root: Path,
        items: Sequence[Item],
        *,
        shape: tuple[int, int, int],
        settings: dict[str, Any],
        decode: DecodeFn,
        workers: int,
        tick: Callable[[], None],
        warn: Callable[[str], None],
    ) -> Decoded:
        """The listing's decoded images: from the entry when there is a valid one, else decoded into a new entry
        (another run decoding the same listing is waited for). A cache folder that cannot be written, or a disk
        that fills up, decodes into memory instead, after one ``warn``."""
        family = _digest(
            {
                "format": CACHE_FORMAT,
                "name": name,
                "root": str(root.resolve()),
                "shape": shape,
                "settings": settings,
                "version": __version__,
            }
        )
        prefix = str(root) + os.sep
        key = _digest(
            {"family": family, "files": [(_relative(i.path, prefix), i.label, i.size, i.mtime_ns) for i in items]}
        )
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            lock = _Lock(self.directory / f"{key}.lock")
        except OSError as exc:
            return _fallback(
                f"the image cache {self.directory} cannot be used ({_reason(exc)})",
                items,
                shape,
                decode,
                workers,
                tick,
                warn,
            )
        try:
            return self._decode_locked(lock, key, family, name, root, items, shape, decode, workers, tick, warn)
        finally:
            lock.release()

    def _decode_locked(
        self,
        lock: _Lock,
        key: str,
        family: str,
        name: str,
        root: Path,
        items: Sequence[Item],
        shape: tuple[int, int, int],
        decode: DecodeFn,
        workers: int,
        tick: Callable[[], None],
        warn: Callable[[str], None],
    ) -> Decoded:
        entry = self.directory / key
        how = "hit"
        with lock.shared():
            found = _read_entry(entry, key, shape, len(items))
            store = self._store(entry, shape, found[0]) if found is not None else None
        if found is None:
            with lock.exclusive():
                found = _read_entry(entry, key, shape, len(items))  # another run may have built it meanwhile
                if found is None:
                    needed = len(items) * int(np.prod(shape)) + HEADER_BYTES
                    free = _free_bytes(self.directory)
                    if free is not None and free < needed + 1024**2:
                        return _fallback(
                            f"the image cache {self.directory} has {free / 1024**2:.1f} MB free and the "
                            f"images need {needed / 1024**2:.1f} MB",
                            items,
                            shape,
                            decode,
                            workers,
                            tick,
                            warn,
                        )
                    try:
                        found = _build(entry, key, family, name, root, items, shape, decode, workers, tick)
                    except OSError as exc:
                        _remove(entry.with_name(f".{key}.tmp"))
                        return _fallback(
                            f"the image cache {self.directory} could not be written ({_reason(exc)})",
                            items,
                            shape,
                            decode,
                            workers,
                            tick,
                            warn,
                        )
                    how = "built"
                store = self._store(entry, shape, found[0])  # open before the lock goes: eviction cannot take it
        store.hold(self.directory / f"{key}.lock")  # while the store lives: eviction passes the entry by
        if how == "built":
            self._evict(keep=key, family=family)
        else:
            for _ in items:
                tick()
        kept, hashes, failed = found
        _touch(entry / USED)
        return Decoded(store, tuple(kept), tuple(hashes), tuple((int(p), str(r)) for p, r in failed), how)

    def _store(self, entry: Path, shape: tuple[int, int, int], kept: list[int]) -> ImageStore:
        return ImageStore.open(entry / IMAGES, shape, np.asarray(kept, dtype=np.int64))

    # -- housekeeping ------------------------------------------------------------------------------------------

    def entries(self) -> list[dict[str, Any]]:
        """Every complete entry: key, folder, images, size in bytes, input shape, last use, created."""
        found = []
        if not self.directory.is_dir():
            return found
        for entry in sorted(self.directory.iterdir()):
            if entry.name.startswith(".") or entry.is_symlink() or not entry.is_dir():
                continue
            try:
                index = json.loads((entry / INDEX).read_text(encoding="utf-8"))
                size = sum(p.stat().st_size for p in entry.iterdir() if p.is_file())
                used = (entry / USED).stat().st_mtime if (entry / USED).exists() else entry.stat().st_mtime
            except (OSError, ValueError):
                continue
            found.append(
                {
                    "key": entry.name,
                    "root": index.get("root"),
                    "name": index.get("name"),
                    "images": len(index.get("kept", [])),
                    "bytes": size,
                    "shape": index.get("shape"),
                    "last_used": used,
                    "created": index.get("created"),
                    "family": index.get("family"),
                }
            )
        return found

    def clear(self, keys: Sequence[str] = ()) -> tuple[int, int, list[str]]:
        """Remove the entries ``keys`` (all when empty) and leftovers of killed runs; entries another run is using
        are kept. Returns (entries removed, bytes freed, keys kept because in use)."""
        removed, freed, busy = 0, 0, []
        wanted = set(keys)
        for info in self.entries():
            if wanted and info["key"] not in wanted:
                continue
            if self._remove_entry(info["key"]):
                removed, freed = removed + 1, freed + info["bytes"]
            else:
                busy.append(info["key"])
        unknown = wanted - {i["key"] for i in self.entries()} - set(busy)
        if unknown and not removed:
            raise DataError(f"no cache entry {min(unknown)!r} in {self.directory}; `edgecls cache list` shows them")
        if not wanted:
            self._remove_stale_builds()
        return removed, freed, busy

    def _evict(self, keep: str, family: str) -> None:
        """Remove older entries of the same folder and settings, then the least recently used ones while the cache
        holds more than ``max_bytes``; never one in use."""
        entries = [e for e in self.entries() if e["key"] != keep]
        for info in entries:
            if info["family"] == family:
                self._remove_entry(info["key"])
        entries = sorted((e for e in self.entries() if e["key"] != keep), key=lambda e: e["last_used"])
        total = sum(e["bytes"] for e in self.entries())
        for info in entries:
            if total <= self.max_bytes:
                break
            if self._remove_entry(info["key"]):
                total -= info["bytes"]
        self._remove_stale_builds()

    def _remove_entry(self, key: str) -> bool:
        lock_path = self.directory / f"{key}.lock"
        try:
            lock = _Lock(lock_path)
        except OSError:
            return False
        if not lock.try_exclusive():
            return False
        try:
            _remove(self.directory / key)
            lock_path.unlink(missing_ok=True)
        finally:
            lock.release()
        return True

    def _remove_stale_builds(self) -> None:
        """Temporary folders of builds that were killed (their key's lock is free: nobody is building it)."""
        for tmp in self.directory.glob(".*.tmp"):
            key = tmp.name[1:-4]
            try:
                lock = _Lock(self.directory / f"{key}.lock")
            except OSError:
                continue
            if lock.try_exclusive():
                try:
                    _remove(tmp)
                finally:
                    lock.release()


def _build(
    entry: Path,
    key: str,
    family: str,
    name: str,
    root: Path,
    items: Sequence[Item],
    shape: tuple[int, int, int],
    decode: DecodeFn,
    workers: int,
    tick: Callable[[], None],
) -> tuple[list[int], list[str], list[list[Any]]]:
    """Decode ``items`` into ``.KEY.tmp`` with pwrite (nothing accumulates in memory), write the index last, then
    rename the folder to ``KEY``: an entry exists whole or not at all."""
    tmp = entry.with_name(f".{key}.tmp")
    _remove(tmp)  # a killed build of this key (we hold its lock)
    tmp.mkdir()
    hashes, failed = _write_images(tmp / IMAGES, items, shape, decode, workers, tick)
    kept = sorted(hashes)
    index = {
        "format": CACHE_FORMAT,
        "key": key,
        "family": family,
        "root": str(root.resolve()),
        "name": name,
        "shape": list(shape),
        "count": len(items),
        "kept": kept,
        "hashes": [hashes[i] for i in kept],
        "failed": failed,
        "created": time.time(),
        "files": [_relative(i.path, str(root) + os.sep) for i in items],
        "edgecls": __version__,
    }
    with open(tmp / INDEX, "w", encoding="utf-8") as fh:
        json.dump(index, fh)
        fh.flush()
        os.fsync(fh.fileno())
    _touch(tmp / USED)
    _remove(entry)  # an entry that failed validation (a damaged index); we hold its lock
    os.rename(tmp, entry)
    _fsync_dir(entry.parent)
    return kept, index["hashes"], failed


def _write_images(
    path: Path,
    items: Sequence[Item],
    shape: tuple[int, int, int],
    decode: DecodeFn,
    workers: int,
    tick: Callable[[], None],
) -> tuple[dict[int, str], list[list[Any]]]:
    """An .npy file of one row per item, each decoded image written at its row with pwrite as it comes (a row that
    did not decode stays zeros), synced; the content hash of each row written and [position, reason] of each
    failure."""
    row_bytes = int(np.prod(shape))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        os.write(fd, _npy_header((len(items), *shape)))

        def store(position: int, image: np.ndarray) -> None:
            data = np.ascontiguousarray(image, dtype=np.uint8).tobytes()
            offset = HEADER_BYTES + position * row_bytes
            done = 0
            while done < len(data):
                done += os.pwrite(fd, data[done:], offset + done)

        hashes: dict[int, str] = {}
        failed: list[list[Any]] = []
        for position, result in _decode_each(items, decode, workers):
            tick()
            if isinstance(result, str):
                failed.append([position, result])
            else:
                image, digest = result
                store(position, image)
                hashes[position] = digest
        os.ftruncate(fd, HEADER_BYTES + len(items) * row_bytes)
        os.fsync(fd)
    finally:
        os.close(fd)
    return hashes, failed


def _decode_each(items: Sequence[Item], decode: DecodeFn, workers: int) -> Iterator[tuple[int, Any]]:
    """(position, (image, hash) or the reason it failed) for each item, decoded on ``workers`` threads (the image
    libraries release the GIL), in order, with a bounded number of images in flight."""
    from concurrent.futures import ThreadPoolExecutor

    from edgecls.errors import ImageError

    def one(item: Item) -> Any:
        try:
            return decode(item.path)
        except (ImageError, OSError) as exc:
            return str(exc).split(": ", 1)[-1] if isinstance(exc, ImageError) else _reason(exc)

    window = max(8, 4 * workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: list[Any] = []
        for position, item in enumerate(items):
            pending.append((position, pool.submit(one, item)))
            if len(pending) >= window:
                done_position, future = pending.pop(0)
                yield done_position, future.result()
        for done_position, future in pending:
            yield done_position, future.result()


def decode_in_memory(
    items: Sequence[Item],
    shape: tuple[int, int, int],
    decode: DecodeFn,
    workers: int,
    tick: Callable[[], None],
    cache: str = "off",
) -> Decoded:
    """Decode ``items`` into one array in memory (no cache: memory grows with the number of images)."""
    arrays, kept, hashes, failed = [], [], [], []
    for position, result in _decode_each(items, decode, workers):
        tick()
        if isinstance(result, str):
            failed.append((position, result))
        else:
            arrays.append(result[0])
            kept.append(position)
            hashes.append(result[1])
    stacked = np.stack(arrays) if arrays else np.zeros((0, *shape), np.uint8)
    return Decoded(stacked, tuple(kept), tuple(hashes), tuple(failed), cache)


def _fallback(
    why: str,
    items: Sequence[Item],
    shape: tuple[int, int, int],
    decode: DecodeFn,
    workers: int,
    tick: Callable[[], None],
    warn: Callable[[str], None],
) -> Decoded:
    warn(f"{why}; decoding into memory for this run (--cache-dir DIR chooses another folder)")
    return decode_in_memory(items, shape, decode, workers, tick, cache=f"fallback: {why}")


def _read_entry(
    entry: Path, key: str, shape: tuple[int, int, int], count: int
) -> tuple[list[int], list[str], list[list[Any]]] | None:
    """The entry's (kept rows, hashes, failures) when it is complete and belongs to ``key``; else None."""
    try:
        if entry.is_symlink() or not entry.is_dir():
            return None
        index = json.loads((entry / INDEX).read_text(encoding="utf-8"))
        size = (entry / IMAGES).stat().st_size
    except (OSError, ValueError):
        return None
    ok = (
        isinstance(index, dict)
        and index.get("format") == CACHE_FORMAT
        and index.get("key") == key
        and index.get("shape") == list(shape)
        and index.get("count") == count
        and size == HEADER_BYTES + count * int(np.prod(shape))
        and len(index.get("kept", [])) == len(index.get("hashes", []))
    )
    if not ok:
        return None
    return list(index["kept"]), list(index["hashes"]), list(index.get("failed", []))


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """A .npy format 1.0 header for a C-order uint8 array of ``shape``, padded to HEADER_BYTES, so the file is also
    a plain numpy file (np.load(path, mmap_mode="r") reads it)."""
    text = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    body = text.encode("latin1")
    pad = HEADER_BYTES - 10 - len(body) - 1
    if pad < 0:
        raise DataError(f"cannot cache images of shape {shape}")
    return b"\x93NUMPY\x01\x00" + (HEADER_BYTES - 10).to_bytes(2, "little") + body + b" " * pad + b"\n"


class _Lock:
    """An flock on a file of its own (kept open while held)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)

    def _hold(self, mode: int) -> _Held:
        fcntl.flock(self.fd, mode)
        return _Held(self)

    def shared(self) -> _Held:
        return self._hold(fcntl.LOCK_SH)

    def exclusive(self) -> _Held:
        return self._hold(fcntl.LOCK_EX)

    def try_exclusive(self) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            os.close(self.fd)
            self.fd = -1
            return False

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the lock
            self.fd = -1


class _Held:
    def __init__(self, lock: _Lock) -> None:
        self.lock = lock

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.lock.fd, fcntl.LOCK_UN)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _relative(path: Path, prefix: str) -> str:
    """``path`` under the folder ``prefix`` (which ends in a separator), or the whole absolute path."""
    text = str(path)
    return text[len(prefix) :] if text.startswith(prefix) else os.path.abspath(text)


def _reason(exc: OSError) -> str:
    from edgecls.fsutil import os_reason

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full"
    return os_reason(exc)


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _touch(path: Path) -> None:
    try:
        path.touch()
    except OSError:  # a read-only cache still serves its entries
        pass


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
