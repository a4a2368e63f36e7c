"""Lossless compaction of the TFLite flatbuffer that the TensorFlow converter writes.

On a small model a third of the converter's int8 file is not weights (MobileNet V1 0.25: 106 KB of 326 KB):
- every per-channel quantised tensor carries its own vector of int64 zero points, nearly all zeros, 8 bytes a
  channel (40 KB in that model), and every tensor its own shape and shape-signature vectors, although a flatbuffer
  may store equal vectors once and point at them from many tables;
- every tensor name is the ';'-joined list of the TensorFlow ops fused into it, each under the full Keras model path
  (28 KB), where the first op, below the path that all names share, says the same to a person reading the graph.

`compact` rewrites the file with each distinct vector and string stored once, and tensor names shortened that way
(MobileNet: 326 KB -> 258 KB). Nothing the interpreter computes changes: the ops, tensors, shapes, buffers (still
16-byte aligned), quantisation values, signatures and metadata are the same, so outputs are bit-identical (tests
check it). The schema's Python object API (shipped with TensorFlow) reads and writes the file; where it is missing
the bytes are returned unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

TFLITE_IDENTIFIER = b"TFL3"
BUFFER_ALIGNMENT = 16  # the schema's force_align for Buffer.data


def compact(flatbuffer: bytes) -> bytes:
    """``flatbuffer`` (a TFLite model, without any appended archive) rewritten smaller; see the module docstring."""
    try:
        import flatbuffers
        from tensorflow.lite.python import schema_py_generated as schema
    except ImportError as exc:  # an older or trimmed TensorFlow: a larger file, nothing worse
        log.warning("TFLite file not compacted (%s)", exc)
        return flatbuffer
    try:
        model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
        if any(b.offset > 1 for b in model.buffers or []):  # weights stored after the flatbuffer: leave the layout
            return flatbuffer
        for subgraph in model.subgraphs or []:
            tensors = subgraph.tensors or []
            for tensor, name in zip(tensors, short_names([_text(t.name) for t in tensors])):
                tensor.name = name
        model.buffers = [_AlignedBuffer(b, schema) for b in model.buffers or []]
        builder = _sharing_builder_class(flatbuffers.Builder)(len(flatbuffer))
        builder.Finish(model.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
        out = bytes(builder.Output())
    except Exception as exc:  # a schema this code does not know: the converter's file is still a good file
        log.warning("TFLite file not compacted (%s: %s)", type(exc).__name__, exc)
        return flatbuffer
    return out if len(out) < len(flatbuffer) else flatbuffer


def short_names(names: list[str]) -> list[str]:
    """The first of the ';'-joined op names, below the '/'-path that all path-like names share."""
    first = [name.split(";")[0] for name in names]
    paths = [name.split("/") for name in first if "/" in name]
    depth = 0
    while paths and all(len(p) > depth + 1 and p[depth] == paths[0][depth] for p in paths):
        depth += 1
    return ["/".join(name.split("/")[depth:]) if "/" in name else name for name in first]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else (value or "")


def _sharing_builder_class(builder: type) -> type:
    class SharingBuilder(builder):  # type: ignore[misc,valid-type]
        """A Builder that writes each distinct numeric vector once: the object API packs every vector of numbers
        (shapes, scales, zero points) through CreateNumpyVector, and a flatbuffer may point at one vector from many
        tables. Strings are shared the same way."""

        def __init__(self, size: int) -> None:
            super().__init__(size)
            self._vectors: dict[tuple[str, tuple[int, ...], bytes], int] = {}
            self._strings: dict[Any, int] = {}

        def CreateNumpyVector(self, x: Any) -> int:
            key = (x.dtype.str, x.shape, x.tobytes())
            if key not in self._vectors:
                self._vectors[key] = super().CreateNumpyVector(x)
            return self._vectors[key]

        def CreateString(self, s: Any, *args: Any, **kwargs: Any) -> int:
            if s not in self._strings:
                self._strings[s] = super().CreateString(s, *args, **kwargs)
            return self._strings[s]

    return SharingBuilder


class _AlignedBuffer:
    """Packs a BufferT with its data 16-byte aligned, as the C++ builder does (the generated Python one does not)."""

    def __init__(self, buffer: Any, schema: Any) -> None:
        self.buffer, self.schema = buffer, schema

    def Pack(self, builder: Any) -> int:
        b, s = self.buffer, self.schema
        data = None
        if b.data is not None and len(b.data):
            raw = np.asarray(b.data, dtype=np.uint8).tobytes()
            builder.StartVector(1, len(raw), BUFFER_ALIGNMENT)
            builder.head -= len(raw)
            builder.Bytes[builder.head : builder.head + len(raw)] = raw
            data = builder.EndVector()
        s.BufferStart(builder)
        if data is not None:
            s.BufferAddData(builder, data)
        s.BufferAddOffset(builder, b.offset)
        s.BufferAddSize(builder, b.size)
        return s.BufferEnd(builder)
