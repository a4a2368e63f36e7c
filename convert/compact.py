"""Lossless compaction of the TFLite flatbuffer that the TensorFlow converter writes.

On a small model a third of the converter's int8 file is not weights (MobileNet V1 0.25: 106 KB of 326 KB):
- every per-channel quantised tensor carries its own vector of int64 zero points, nearly all zeros, 8 bytes a
  channel (40 KB in that model), although the same vector could be stored once and referred to by every tensor;
- every tensor name is the ';'-joined list of the TensorFlow ops fused into it, each under the full Keras model path
  (28 KB), where the first op, below the path that all names share, says the same to a person reading the graph.

`compact` rewrites the file with identical vectors of quantisation parameters stored once, and tensor names
shortened that way. Nothing the interpreter computes changes: the ops, tensors, shapes, buffers (still 16-byte
aligned), quantisation values, signatures and metadata are the same, so outputs are bit-identical (tests check it).
The schema's Python object API (shipped with TensorFlow) reads and writes the file; where it is missing the bytes
are returned unchanged.
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
    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    if any(b.offset > 1 for b in model.buffers or []):  # weights stored after the flatbuffer: leave the layout
        return flatbuffer
    shared: dict[tuple[str, bytes], int] = {}
    for subgraph in model.subgraphs or []:
        tensors = subgraph.tensors or []
        for tensor, name in zip(tensors, short_names([_text(t.name) for t in tensors])):
            tensor.name = name
            if tensor.quantization is not None:
                tensor.quantization = _SharedQuantization(tensor.quantization, shared, schema)
    model.buffers = [_AlignedBuffer(b, schema) for b in model.buffers or []]
    builder = flatbuffers.Builder(len(flatbuffer))
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
    out = bytes(builder.Output())
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


class _SharedQuantization:
    """Packs a QuantizationParametersT with each of its vectors shared with equal vectors packed before."""

    def __init__(self, params: Any, shared: dict[tuple[str, bytes], int], schema: Any) -> None:
        self.params, self.shared, self.schema = params, shared, schema

    def _vector(self, builder: Any, values: Any, dtype: type) -> int | None:
        if values is None:
            return None
        array = np.asarray(values, dtype=dtype)
        key = (np.dtype(dtype).str, array.tobytes())
        if key not in self.shared:
            self.shared[key] = builder.CreateNumpyVector(array)
        return self.shared[key]

    def Pack(self, builder: Any) -> int:  # noqa: N802 (the object API's name)
        p, s = self.params, self.schema
        vectors = [(s.QuantizationParametersAddMin, self._vector(builder, p.min, np.float32)),
                   (s.QuantizationParametersAddMax, self._vector(builder, p.max, np.float32)),
                   (s.QuantizationParametersAddScale, self._vector(builder, p.scale, np.float32)),
                   (s.QuantizationParametersAddZeroPoint, self._vector(builder, p.zeroPoint, np.int64))]
        details = p.details.Pack(builder) if p.details is not None else None
        s.QuantizationParametersStart(builder)
        for add, vector in vectors:
            if vector is not None:
                add(builder, vector)
        s.QuantizationParametersAddDetailsType(builder, p.detailsType)
        if details is not None:
            s.QuantizationParametersAddDetails(builder, details)
        s.QuantizationParametersAddQuantizedDimension(builder, p.quantizedDimension)
        return s.QuantizationParametersEnd(builder)


class _AlignedBuffer:
    """Packs a BufferT with its data 16-byte aligned, as the C++ builder does (the generated Python one does not)."""

    def __init__(self, buffer: Any, schema: Any) -> None:
        self.buffer, self.schema = buffer, schema

    def Pack(self, builder: Any) -> int:  # noqa: N802 (the object API's name)
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
