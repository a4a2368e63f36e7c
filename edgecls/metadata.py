"""What a .tflite file carries besides the graph: associated files and the edgecls manifest.

TFLite metadata (as written by Model Maker and shipped with Coral models) appends a zip archive to the flatbuffer;
interpreters ignore the trailing bytes. Label files live in that zip. edgecls stores its own manifest there too, as
``edgecls_manifest.json`` (labels, input spec, colour order, resize mode, normalisation, provenance), so a model
converted by ``edgecls convert`` needs no other file on the device.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError
from .flatbuffer import ModelStructure, verify_model

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


def check_model_file(path: str | os.PathLike[str]) -> ModelFileInfo:
    """Validate that ``path`` is a TFLite flatbuffer and read its appended files and manifest.

    Raises ModelError naming the file when it is missing, not a TFLite model, or its manifest is unreadable.
    """
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model file not found: {p}")
    if p.is_dir():
        raise ModelError(f"model path is a directory, expected a .tflite file: {p}")
    size = p.stat().st_size
    with p.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8 or head[4:8] != TFLITE_IDENTIFIER:
            raise ModelError(
                f"{p} is not a TFLite model (no 'TFL3' flatbuffer identifier, {size} bytes); "
                "pass a .tflite file, or convert a Keras model with `edgecls convert`"
            )
        files = _read_appended_zip(fh)
    structure = verify_model(p)
    manifest = None
    if MANIFEST_NAME in files:
        try:
            manifest = json.loads(files[MANIFEST_NAME].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{p}: the embedded {MANIFEST_NAME} is not valid JSON ({exc}); re-run edgecls convert") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            raise ModelError(f"{p}: the embedded {MANIFEST_NAME} is not an edgecls manifest; re-run edgecls convert")
    return ModelFileInfo(p, size, files, manifest, structure)


def _read_appended_zip(fh: io.BufferedReader) -> dict[str, bytes]:
    fh.seek(0)
    try:
        with zipfile.ZipFile(fh) as zf:
            return {info.filename: zf.read(info) for info in zf.infolist() if not info.is_dir()}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return {}


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
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in existing.items():
            zf.writestr(name, data)
    return flatbuffer_bytes(model) + buf.getvalue()


def embed_manifest(model: bytes, manifest: dict[str, Any], *, labels: list[str] | None = None) -> bytes:
    """Embed an edgecls manifest (and a plain ``labels.txt`` for other tools) into a TFLite model's bytes."""
    body = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, **manifest}
    files = {MANIFEST_NAME: json.dumps(body, indent=2, sort_keys=True).encode("utf-8")}
    if labels is not None:
        body["labels"] = list(labels)
        files[MANIFEST_NAME] = json.dumps(body, indent=2, sort_keys=True).encode("utf-8")
        files["labels.txt"] = ("\n".join(labels) + "\n").encode("utf-8")
    return embed_files(model, files)
