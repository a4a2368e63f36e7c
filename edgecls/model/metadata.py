"""What a .tflite file carries besides the graph: associated files and the edgecls manifest.

TFLite metadata (as written by Model Maker and shipped with Coral models) appends a zip archive to the flatbuffer;
interpreters ignore the trailing bytes. Label files live in that zip. edgecls stores its own manifest there too, as
``edgecls_manifest.json`` (labels, input spec, colour order, resize mode, normalisation, provenance), so a model
converted by ``edgecls convert`` needs no other file on the device.
"""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecls.errors import ModelError
from edgecls.fsutil import os_reason
from edgecls.model.flatbuffer import ModelStructure, verify_model

log = logging.getLogger(__name__)

MANIFEST_NAME = "edgecls_manifest.json"
MANIFEST_FORMAT = "edgecls-manifest"
MANIFEST_VERSION = 1
TFLITE_IDENTIFIER = b"TFL3"
EDGETPU_CUSTOM_OP = "edgetpu-custom-op"


@dataclass(frozen=True)
class ModelFileInfo:
    """Facts read from the model file itself, without an interpreter."""

    path: Path
    size_bytes: int
    associated_files: dict[str, bytes] = field(default_factory=dict)
    manifest: dict[str, Any] | None = None
    structure: ModelStructure | None = None

    def has_edgetpu_op(self) -> bool:
        """Whether the model was compiled for the Edge TPU (it holds ``edgetpu-custom-op``)."""
        codes = self.structure.operator_codes if self.structure else ()
        return any(code.custom_code == EDGETPU_CUSTOM_OP for code in codes)


# Bounds on what the appended zip may hold: a label file of a few MB is already huge (Coral's 1001 ImageNet labels
# are 21 KB); anything larger is skipped with a warning, never inflated.
MAX_ENTRY_BYTES = 16 << 20
MAX_TOTAL_BYTES = 64 << 20
MAX_ENTRIES = 1000
# The manifest's known keys and the JSON types they must have (anything else in a manifest is kept, unread).
MANIFEST_TYPES: dict[str, type | tuple[type, ...]] = {
    "labels": list,
    "preprocess": dict,
    "output": dict,
    "input": dict,
    "provenance": dict,
    "version": int,
}
# Warnings about a file's metadata already given in this process, by file (path, size, mtime) and text: a command
# reads one model more than once (`info` checks the file, then the classifier does), and says each problem once.
_WARNED: set[tuple[str, int, int, str]] = set()
_MAX_WARNED = 10_000


def check_model_file(path: str | os.PathLike[str]) -> ModelFileInfo:
    """Validate that ``path`` is a TFLite flatbuffer and read its appended files and manifest.

    Raises ModelError naming the file when it is missing, not a regular file, not a TFLite model, has no operators,
    or carries a damaged manifest. Damaged or oversized metadata entries are skipped with a warning (the
    interpreter ignores them; only their labels are lost).
    """
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model file not found: {p}")
    if p.is_dir():
        raise ModelError(f"model path is a directory, expected a .tflite file: {p}")
    try:
        st = p.stat()
    except OSError as exc:
        raise ModelError(f"cannot read {p} ({os_reason(exc)})") from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block the reader forever
        raise ModelError(f"{p} is not a regular file; pass a .tflite file")
    size = st.st_size
    try:
        with p.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8 or head[4:8] != TFLITE_IDENTIFIER:
                raise ModelError(
                    f"{p} is not a TFLite model (no 'TFL3' flatbuffer identifier, {size} bytes); "
                    "pass a .tflite file, or convert a Keras model with `edgecls convert`"
                )
            files = _read_appended_zip(fh, p, (str(p.absolute()), size, st.st_mtime_ns))
    except OSError as exc:
        raise ModelError(f"cannot read {p} ({os_reason(exc)})") from None
    structure = verify_model(p)
    if not structure.operator_counts or structure.operator_counts[0] == 0:
        raise ModelError(f"{p}: the model's graph has no operators; it cannot compute anything (a damaged file?)")
    manifest = None
    if MANIFEST_NAME in files:
        manifest = _parse_manifest(files[MANIFEST_NAME], p)
    return ModelFileInfo(p, size, files, manifest, structure)


def _parse_manifest(data: bytes, p: Path) -> dict[str, Any]:
    fix = "re-run edgecls convert, or copy the model again"
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:120]
        raise ModelError(f"{p}: the embedded {MANIFEST_NAME} is not valid JSON ({reason}); {fix}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ModelError(f"{p}: the embedded {MANIFEST_NAME} is not an edgecls manifest; {fix}")
    for key, kind in MANIFEST_TYPES.items():
        if key in manifest and not isinstance(manifest[key], kind):
            raise ModelError(
                f"{p}: the embedded {MANIFEST_NAME} is damaged ({key!r} is a {type(manifest[key]).__name__}, "
                f"expected a JSON {'array' if kind is list else 'object' if kind is dict else 'number'}); {fix}"
            )
    labels = manifest.get("labels")
    if labels is not None and not all(isinstance(x, str) for x in labels):
        raise ModelError(f"{p}: the embedded {MANIFEST_NAME} is damaged (its labels are not all strings); {fix}")
    return manifest


def _warn_once(file: tuple[str, int, int], message: str, *args: Any) -> None:
    """Log a warning about a model file's metadata, unless this process already gave it for the same file."""
    key = (*file, message % args)
    if key in _WARNED:
        return
    if len(_WARNED) >= _MAX_WARNED:
        _WARNED.clear()
    _WARNED.add(key)
    log.warning(message, *args)


def _read_appended_zip(fh: Any, p: Path, file: tuple[str, int, int]) -> dict[str, bytes]:
    fh.seek(0)
    try:
        zf = zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, struct.error):
        return {}
    files: dict[str, bytes] = {}
    total = 0
    with zf:
        infos = [info for info in zf.infolist() if not info.is_dir()]
        if len(infos) > MAX_ENTRIES:
            _warn_once(
                file, "%s: its metadata zip has %d entries; reading none (at most %d)", p, len(infos), MAX_ENTRIES
            )
            return {}
        for info in infos:
            if info.file_size > MAX_ENTRY_BYTES or total + info.file_size > MAX_TOTAL_BYTES:
                _warn_once(
                    file,
                    "%s: metadata entry %r is %d bytes; skipped (at most %d)",
                    p,
                    info.filename,
                    info.file_size,
                    MAX_ENTRY_BYTES,
                )
                continue
            try:
                with zf.open(info) as member:
                    data = member.read(MAX_ENTRY_BYTES + 1)  # the header may lie about the size: bound the read
            except (
                zipfile.BadZipFile,
                zlib.error,
                RuntimeError,
                NotImplementedError,
                OSError,
                EOFError,
                ValueError,
                struct.error,
            ) as exc:
                _warn_once(file, "%s: metadata entry %r cannot be read (%s); skipped", p, info.filename, _short(exc))
                continue
            if len(data) > MAX_ENTRY_BYTES:
                _warn_once(file, "%s: metadata entry %r is larger than its header says; skipped", p, info.filename)
                continue
            files[info.filename] = data
            total += len(data)
    return files


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:120]


def flatbuffer_bytes(model: bytes) -> bytes:
    """The model's flatbuffer without any appended zip archive."""
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as zf:
            infos = zf.infolist()
            if not infos:
                return model
            return model[: min(info.header_offset for info in infos)]
    except zipfile.BadZipFile:
        return model


def embed_files(model: bytes, files: dict[str, bytes]) -> bytes:
    """Return ``model`` with ``files`` added to (or replaced in) its appended zip; other files are kept."""
    if model[4:8] != TFLITE_IDENTIFIER:
        raise ModelError("cannot embed files: the bytes are not a TFLite flatbuffer")
    existing: dict[str, bytes] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(model)) as zf:
            existing = {info.filename: zf.read(info) for info in zf.infolist() if not info.is_dir()}
    except zipfile.BadZipFile:
        pass
    existing.update(files)
    buf = io.BytesIO()
    # stored, not deflated: the standard metadata's readers (TFLite Support, MediaPipe) take associated files only so
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in existing.items():
            zf.writestr(name, data)
    return flatbuffer_bytes(model) + buf.getvalue()


EDGETPU_SUFFIX = "_edgetpu"


def compiled_sibling(model: str | os.PathLike[str]) -> Path | None:
    """``NAME_edgetpu.tflite`` beside ``NAME.tflite``, if it exists (None for a model that is already a build)."""
    p = Path(model)
    if p.stem.endswith(EDGETPU_SUFFIX):
        return None
    sibling = p.with_name(f"{p.stem}{EDGETPU_SUFFIX}{p.suffix}")
    return sibling if sibling.is_file() else None


def sibling_mismatch(cpu: Any, compiled: Any) -> str | None:
    """Why an Edge TPU build (``compiled``, a ModelFileInfo) does not belong to the CPU model beside it, or None.

    Models edgecls writes carry a run id in their manifest: both must have the same one. Other pairs (Coral's) must
    at least agree on the input and output tensors (shape, type, quantisation), which the compiler keeps."""
    from edgecls.model.flatbuffer import read_graph

    ids = [((info.manifest or {}).get("provenance") or {}).get("run_id") for info in (cpu, compiled)]
    if ids[0] and ids[1]:
        return (
            None
            if ids[0] == ids[1]
            else f"it was compiled from another run (run id {ids[1]}, the CPU model's is {ids[0]})"
        )
    if bool(ids[0]) != bool(ids[1]) and cpu.manifest is not None:
        return "the CPU model is from an edgecls run the Edge TPU build does not record"

    def edges(info: Any) -> list[tuple[Any, ...]]:
        graph = read_graph(info.path)
        return [
            (
                graph.tensors[i].shape,
                graph.tensors[i].dtype,
                tuple(round(s, 9) for s in graph.tensors[i].scales),
                graph.tensors[i].zero_points,
            )
            for i in (*graph.inputs, *graph.outputs)
        ]

    a, b = edges(cpu), edges(compiled)
    return None if a == b else f"its inputs and outputs differ ({b} against the CPU model's {a})"


def cpu_sibling(model: str | os.PathLike[str]) -> Path | None:
    """``NAME.tflite`` beside an Edge TPU build ``NAME_edgetpu.tflite``, if it exists."""
    p = Path(model)
    if not p.stem.endswith(EDGETPU_SUFFIX):
        return None
    sibling = p.with_name(p.stem[: -len(EDGETPU_SUFFIX)] + p.suffix)
    return sibling if sibling.is_file() else None
