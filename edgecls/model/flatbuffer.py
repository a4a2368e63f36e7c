"""A small bounds-checked reader for the TFLite flatbuffer, without TensorFlow or generated code.

Interpreters differ in how carefully they check a file: the legacy tflite-runtime crashes the process on a truncated
model. `verify_model` walks the structure the interpreters will walk (subgraphs, tensors, operators, buffers) and
raises ModelError when anything points outside the file, before an interpreter sees it.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecls.errors import ModelError
from edgecls.model.tflite_schema import builtin_name, tensor_type_name


class _Truncated(Exception):
    """Internal: an offset points outside the file."""


class _Table:
    __slots__ = ("buf", "pos", "vsize", "vtable")

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

    def tables(self, index: int) -> list[_Table]:
        vec = self.vector(index, 4)
        if vec is None:
            return []
        start, length = vec
        return [
            _Table(self.buf, start + 4 * i + struct.unpack_from("<I", self.buf, start + 4 * i)[0])
            for i in range(length)
        ]

    def table(self, index: int) -> _Table | None:
        at = self._target(index)
        return None if at is None else _Table(self.buf, at)

    def numbers(self, index: int, fmt: str) -> tuple[Any, ...]:
        """A vector of scalars (``fmt`` one struct code: "i", "q", "f"...) as a tuple; () when absent."""
        size = struct.calcsize(fmt)
        vec = self.vector(index, size)
        if vec is None:
            return ()
        start, length = vec
        return struct.unpack_from(f"<{length}{fmt}", self.buf, start)

    def string(self, index: int) -> str | None:
        vec = self.vector(index, 1)
        if vec is None:
            return None
        start, length = vec
        return bytes(self.buf[start : start + length]).decode("utf-8", "replace")


def _check_indices(indices: tuple[int, ...], count: int, what: str) -> None:
    bad = [i for i in indices if not -1 <= i < count]  # -1: an optional input left out
    if bad:
        raise _Truncated(f"{what} uses tensor {bad[0]} of {count}")


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
    codes = tuple(OperatorCode(max(t.scalar(0, "b"), t.scalar(3, "i")), t.string(1)) for t in model.tables(1))
    counts = []
    tensors = 0
    for n, subgraph in enumerate(model.tables(2)):
        count = 0
        for tensor in subgraph.tables(0):
            tensor.vector(0, 4)
            tensor.string(3)
            count += 1
        tensors += count
        inputs, outputs = subgraph.numbers(1, "i"), subgraph.numbers(2, "i")
        if n == 0 and (not inputs or not outputs):
            raise _Truncated(f"the main graph has {len(inputs)} inputs and {len(outputs)} outputs")
        _check_indices(inputs + outputs, count, "a graph input or output")
        operators = subgraph.tables(3)
        for op in operators:
            if op.scalar(0, "I") >= len(codes):
                raise _Truncated(f"an operator uses opcode {op.scalar(0, 'I')} of {len(codes)}")
            _check_indices(op.numbers(1, "i") + op.numbers(2, "i"), count, "an operator")
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


# -- the graph, for pre-flight checks and for describing models no interpreter here can run --------------------------


@dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...]  # -1 where a dimension is dynamic; equal to shape when static
    scales: tuple[float, ...]
    zero_points: tuple[int, ...]
    constant: bool  # backed by data in the file (weights, biases, constant operands)

    @property
    def quantized(self) -> bool:
        return bool(self.scales)

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def dynamic(self) -> bool:
        return any(d < 0 for d in self.shape_signature)


@dataclass(frozen=True)
class OperatorInfo:
    index: int
    name: str  # builtin name (CONV_2D) or the custom code (edgetpu-custom-op)
    version: int
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: dict[str, int]


@dataclass(frozen=True)
class Graph:
    """The main subgraph of a model: tensors, operators in execution order, and the graph inputs and outputs."""

    tensors: tuple[TensorInfo, ...]
    operators: tuple[OperatorInfo, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    num_subgraphs: int
    constants: dict[int, tuple[int, ...]] = field(default_factory=dict, repr=False)

    def constant_values(self, tensor: int) -> tuple[int, ...]:
        """The integer values of a small constant tensor (an axis list, a padding table); () if unknown."""
        return self.constants.get(tensor, ())


# Fields read from the builtin options tables that pre-flight checks need, by BuiltinOptions type:
# {type: (table name, {field index: (name, struct code)})}
_OPTIONS = {
    1: {
        3: ("fused_activation", "b"),
        4: ("dilation_w", "i"),
        5: ("dilation_h", "i"),
        1: ("stride_w", "i"),
        2: ("stride_h", "i"),
    },  # Conv2DOptions
    2: {4: ("fused_activation", "b"), 5: ("dilation_w", "i"), 6: ("dilation_h", "i"), 3: ("depth_multiplier", "i")},
    5: {5: ("fused_activation", "b"), 3: ("filter_w", "i"), 4: ("filter_h", "i")},  # Pool2DOptions
    8: {0: ("fused_activation", "b"), 1: ("weights_format", "b"), 2: ("keep_num_dims", "b")},  # FullyConnected
    10: {0: ("axis", "i"), 1: ("fused_activation", "b")},  # ConcatenationOptions
    27: {0: ("keep_dims", "b")},  # ReducerOptions
    32: {
        0: ("begin_mask", "i"),
        1: ("end_mask", "i"),
        2: ("ellipsis_mask", "i"),
        3: ("new_axis_mask", "i"),
        4: ("shrink_axis_mask", "i"),
    },  # StridedSliceOptions
}
_DEFAULTS = {"dilation_w": 1, "dilation_h": 1, "stride_w": 1, "stride_h": 1, "depth_multiplier": 1}


def read_graph(path: str | os.PathLike[str]) -> Graph:
    """Read the first subgraph of a TFLite model (bounds-checked; raises ModelError on a corrupt file)."""
    p = Path(path)
    with p.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            return _graph(buf)
        except (_Truncated, struct.error, ValueError) as exc:
            raise ModelError(
                f"{p}: the model file is truncated or corrupt ({exc}); copy or download it again"
            ) from None


def _graph(buf: mmap.mmap) -> Graph:
    model = _Table(buf, struct.unpack_from("<I", buf, 0)[0])
    codes = [(max(t.scalar(0, "b"), t.scalar(3, "i")), t.string(1), t.scalar(2, "i", 1)) for t in model.tables(1)]
    buffers = model.tables(4)
    subgraphs = model.tables(2)
    if not subgraphs:
        raise ValueError("the model has no subgraph")
    sg = subgraphs[0]
    tensors, constants = _tensors(buf, sg, buffers)
    return Graph(
        tuple(tensors),
        tuple(_operators(sg, codes)),
        tuple(sg.numbers(1, "i")),
        tuple(sg.numbers(2, "i")),
        len(subgraphs),
        constants,
    )


def _tensors(buf: mmap.mmap, sg: _Table, buffers: list[_Table]) -> tuple[list[TensorInfo], dict[int, tuple[int, ...]]]:
    """The subgraph's tensors, and by tensor the values of its int32/int64 constants (their first 64 bytes: a
    shape, an axis list)."""
    tensors, constants = [], {}
    for i, t in enumerate(sg.tables(0)):
        shape = t.numbers(0, "i")
        signature = t.numbers(7, "i") or shape
        quant = t.table(4)
        scales = quant.numbers(2, "f") if quant else ()
        zeros = quant.numbers(3, "q") if quant else ()
        dtype = tensor_type_name(t.scalar(1, "b"))
        buffer_index = t.scalar(2, "I")
        data = b""
        if 0 < buffer_index < len(buffers):
            vec = buffers[buffer_index].vector(0, 1)
            if vec is not None and vec[1]:
                data = bytes(buf[vec[0] : vec[0] + min(vec[1], 64)])
            elif buffers[buffer_index].scalar(1, "Q") > 1:
                data = b"external"
        if data and dtype in ("int32", "int64") and data != b"external":
            fmt = "i" if dtype == "int32" else "q"
            n = len(data) // struct.calcsize(fmt)
            constants[i] = struct.unpack_from(f"<{n}{fmt}", data, 0)
        tensors.append(
            TensorInfo(
                i,
                t.string(3) or f"tensor{i}",
                dtype,
                tuple(shape),
                tuple(signature),
                tuple(scales),
                tuple(int(z) for z in zeros),
                bool(data),
            )
        )
    return tensors, constants


def _operators(sg: _Table, codes: list[tuple[int, str | None, int]]) -> list[OperatorInfo]:
    """The subgraph's operators, each named (a builtin, or a custom op's own name) with its options read."""
    operators = []
    for i, op in enumerate(sg.tables(3)):
        code_index = op.scalar(0, "I")
        if code_index >= len(codes):
            raise _Truncated(f"an operator uses opcode {code_index} of {len(codes)}")
        code, custom, version = codes[code_index]
        name = custom if code == 32 and custom else builtin_name(code)
        options: dict[str, int] = {}
        fields = _OPTIONS.get(op.scalar(3, "B"))
        table = op.table(4) if fields else None
        if fields:
            for field_index, (key, fmt) in fields.items():
                options[key] = table.scalar(field_index, fmt, _DEFAULTS.get(key, 0)) if table else _DEFAULTS.get(key, 0)
        operators.append(OperatorInfo(i, name, version, tuple(op.numbers(1, "i")), tuple(op.numbers(2, "i")), options))
    return operators
