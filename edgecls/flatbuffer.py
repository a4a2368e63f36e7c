"""A small bounds-checked reader for the TFLite flatbuffer, without TensorFlow or generated code.

Interpreters differ in how carefully they check a file: the legacy tflite-runtime crashes the process on a truncated
model. `verify_model` walks the structure the interpreters will walk (subgraphs, tensors, operators, buffers) and
raises ModelError when anything points outside the file, before an interpreter sees it.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError


class _Truncated(Exception):
    """Internal: an offset points outside the file."""


class _Table:
    __slots__ = ("buf", "pos", "vtable", "vsize")

    def __init__(self, buf: mmap.mmap | bytes, pos: int) -> None:
        self.buf, self.pos = buf, _check(buf, pos, 4)
        self.vtable = _check(buf, pos - struct.unpack_from("<i", buf, pos)[0], 4)
        self.vsize = struct.unpack_from("<H", buf, self.vtable)[0]
        _check(buf, self.vtable, self.vsize)

    def _field(self, index: int) -> int | None:
        slot = 4 + 2 * index
        if slot + 2 > self.vsize:
            return None
        offset = struct.unpack_from("<H", self.buf, self.vtable + slot)[0]
        return self.pos + offset if offset else None

    def scalar(self, index: int, fmt: str, default: int = 0) -> int:
        at = self._field(index)
        if at is None:
            return default
        return struct.unpack_from("<" + fmt, self.buf, _check(self.buf, at, struct.calcsize(fmt)))[0]

    def _target(self, index: int) -> int | None:
        at = self._field(index)
        if at is None:
            return None
        return at + struct.unpack_from("<I", self.buf, _check(self.buf, at, 4))[0]

    def vector(self, index: int, item_size: int) -> tuple[int, int] | None:
        """(start, length) of a vector field, checked to lie inside the file."""
        at = self._target(index)
        if at is None:
            return None
        length = struct.unpack_from("<I", self.buf, _check(self.buf, at, 4))[0]
        _check(self.buf, at + 4, length * item_size)
        return at + 4, length

    def tables(self, index: int) -> list["_Table"]:
        vec = self.vector(index, 4)
        if vec is None:
            return []
        start, length = vec
        return [_Table(self.buf, start + 4 * i + struct.unpack_from("<I", self.buf, start + 4 * i)[0]) for i in range(length)]

    def string(self, index: int) -> str | None:
        vec = self.vector(index, 1)
        if vec is None:
            return None
        start, length = vec
        return bytes(self.buf[start : start + length]).decode("utf-8", "replace")


def _check(buf: mmap.mmap | bytes, pos: int, size: int) -> int:
    if pos < 0 or size < 0 or pos + size > len(buf):
        raise _Truncated(f"offset {pos} + {size} is beyond the end of the file ({len(buf)} bytes)")
    return pos


@dataclass(frozen=True)
class OperatorCode:
    builtin_code: int
    custom_code: str | None


@dataclass(frozen=True)
class ModelStructure:
    """What `verify_model` read: enough for summaries and pre-flight checks."""

    operator_codes: tuple[OperatorCode, ...]
    operator_counts: tuple[int, ...]  # operators per subgraph
    num_tensors: int
    num_buffers: int


def verify_model(path: str | os.PathLike[str]) -> ModelStructure:
    """Check that every table, vector and buffer of the model lies inside the file; raise ModelError if not."""
    p = Path(path)
    with p.open("rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size < 8:
            raise ModelError(f"{p} is not a TFLite model ({size} bytes)")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                return _walk(buf)
            except (_Truncated, struct.error) as exc:
                raise ModelError(
                    f"{p}: the model file is truncated or corrupt ({exc}); copy or download it again"
                ) from None


def _walk(buf: mmap.mmap) -> ModelStructure:
    model = _Table(buf, struct.unpack_from("<I", buf, 0)[0])
    codes = tuple(
        OperatorCode(max(t.scalar(0, "b"), t.scalar(3, "i")), t.string(1)) for t in model.tables(1)
    )
    counts = []
    tensors = 0
    for subgraph in model.tables(2):
        subgraph.vector(1, 4)
        subgraph.vector(2, 4)
        for tensor in subgraph.tables(0):
            tensor.vector(0, 4)
            tensor.string(3)
            tensors += 1
        operators = subgraph.tables(3)
        for op in operators:
            if op.scalar(0, "I") >= len(codes):
                raise _Truncated(f"an operator uses opcode {op.scalar(0, 'I')} of {len(codes)}")
            op.vector(1, 4)
            op.vector(2, 4)
        counts.append(len(operators))
    buffers = model.tables(4)
    for buffer in buffers:
        buffer.vector(0, 1)
        offset, length = buffer.scalar(1, "Q"), buffer.scalar(2, "Q")
        if offset > 1:
            _check(buf, offset, length)
    for entry in model.tables(6):
        entry.string(0)
    return ModelStructure(codes, tuple(counts), tensors, len(buffers))
