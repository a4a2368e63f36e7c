"""Edge TPU pre-flight: predict, from the flatbuffer alone, what the Edge TPU compiler will do with a model.

The rules are the compiler's published requirements (coral.ai/docs/edgetpu/models-intro): every tensor quantised to
8 bits, tensor sizes and parameters constant at compile time, at most three dimensions larger than 1, and each op in
the supported list within its documented constraints. The compiler maps ops in execution order until the first one it
cannot map; that op and every op after it run on the CPU. Leading QUANTIZE and trailing DEQUANTIZE ops of a model
with float input or output are the exception: they run on the CPU without cutting the graph.

`compile_command` and `parse_compiler_log` cover the compile step itself (``edgetpu_compiler`` only exists for
x86-64 Linux), so the converter can run it where it is installed and say exactly what to run where it is not.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgecls.model.flatbuffer import Graph, OperatorInfo, read_graph
from edgecls.model.metadata import EDGETPU_CUSTOM_OP, check_model_file

SUPPORTED_OPS_URL = "https://coral.ai/docs/edgetpu/models-intro/#supported-operations"
QUANTIZED_TYPES = ("int8", "uint8")
SOFTMAX_MAX_ELEMENTS = 16000

Rule = Callable[[OperatorInfo, Graph], "str | None"]


@dataclass(frozen=True)
class OpVerdict:
    index: int
    op: str
    on_edgetpu: bool
    reason: str | None = None


@dataclass(frozen=True)
class Preflight:
    """The prediction for one model. ``status``: "compiled" (already an Edge TPU build), "pass" (every op maps),
    "partial" (the compiler will succeed but ops from ``first_cpu_op`` on run on the CPU) or "fail" (the compiler
    will refuse the model; ``problems`` say why)."""

    model: str
    status: str
    problems: tuple[str, ...]
    ops: tuple[OpVerdict, ...] = ()
    first_cpu_op: OpVerdict | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.status in ("pass", "compiled")

    @property
    def edgetpu_ops(self) -> int:
        return sum(v.on_edgetpu for v in self.ops)

    @property
    def cpu_ops(self) -> int:
        return sum(not v.on_edgetpu for v in self.ops)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "target": "edgetpu",
            "status": self.status,
            "ok": self.ok,
            "problems": list(self.problems),
            "notes": list(self.notes),
            "edgetpu_ops": self.edgetpu_ops,
            "cpu_ops": self.cpu_ops,
            "first_cpu_op": asdict(self.first_cpu_op) if self.first_cpu_op else None,
            "ops": [asdict(v) for v in self.ops],
        }


def preflight(model: str | os.PathLike[str]) -> Preflight:
    """Predict what ``edgetpu_compiler`` will do with ``model`` (raises ModelError for a file that is not a model)."""
    info = check_model_file(model)
    graph = read_graph(info.path)
    name = str(info.path)
    if info.has_edgetpu_op():
        on_tpu = sum(op.name == EDGETPU_CUSTOM_OP for op in graph.operators)
        ops = tuple(OpVerdict(op.index, op.name, op.name == EDGETPU_CUSTOM_OP) for op in graph.operators)
        note = f"already compiled for the Edge TPU ({on_tpu} {EDGETPU_CUSTOM_OP}); run it with --delegate edgetpu"
        return Preflight(name, "compiled", (), ops, next((v for v in ops if not v.on_edgetpu), None), (note,))

    problems = _model_problems(graph)
    if problems:
        return Preflight(
            name, "fail", tuple(problems), tuple(OpVerdict(op.index, op.name, False) for op in graph.operators)
        )

    verdicts: list[OpVerdict] = []
    first: OpVerdict | None = None
    notes = []
    for op in graph.operators:
        boundary = _boundary_op(op, graph)
        if boundary:
            verdicts.append(OpVerdict(op.index, op.name, False, boundary))
            notes.append(f"op {op.index} {op.name}: {boundary}")
            continue
        if first is not None:
            verdicts.append(
                OpVerdict(op.index, op.name, False, f"after op {first.index} ({first.op}), which runs on the CPU")
            )
            continue
        reason = _op_problem(op, graph)
        verdict = OpVerdict(op.index, op.name, reason is None, reason)
        verdicts.append(verdict)
        if reason is not None:
            first = verdict
    if graph.num_subgraphs > 1:
        notes.append(f"the model has {graph.num_subgraphs} subgraphs; only the first is checked and compiled")
    status = "pass" if first is None else "partial"
    if verdicts and all(not v.on_edgetpu for v in verdicts):
        status = "fail"
        problems = [f"no op can run on the Edge TPU: op {first.index} {first.op}: {first.reason}"] if first else []
    return Preflight(name, status, tuple(problems), tuple(verdicts), first, tuple(notes))


# -- model-wide requirements ---------------------------------------------------------------------------------------


def _model_problems(graph: Graph) -> list[str]:
    problems = []
    dynamic = [t for t in graph.tensors if t.dynamic]
    if dynamic:
        t = dynamic[0]
        problems.append(
            f"tensor {t.name!r} has a dynamic shape {list(t.shape_signature)} (and {len(dynamic) - 1} more); the Edge "
            "TPU needs static shapes: convert with a fixed batch-1 input signature (edgecls convert does)"
        )
    for index in graph.inputs:
        t = graph.tensors[index]
        if t.shape and t.shape[0] != 1:
            problems.append(f"input {t.name!r} has batch size {t.shape[0]}; the Edge TPU needs batch 1")
    activations = [t for t in graph.tensors if not t.constant and t.dtype not in ("int32", "int64", "bool")]
    if activations and not any(t.dtype in QUANTIZED_TYPES for t in activations):
        kinds = sorted({t.dtype for t in activations})
        problems.append(
            f"the model is not quantized (its tensors are {', '.join(kinds)}); the Edge TPU runs only 8-bit models: "
            "convert with full-integer int8 quantisation (edgecls convert --quant int8, the default)"
        )
    return problems


def _boundary_op(op: OperatorInfo, graph: Graph) -> str | None:
    """A float<->int8 conversion at the graph edge: it runs on the CPU without cutting the graph."""
    if (
        op.name == "QUANTIZE"
        and op.inputs
        and op.inputs[0] in graph.inputs
        and graph.tensors[op.inputs[0]].dtype not in QUANTIZED_TYPES
    ):
        return "float input is quantised on the CPU before the Edge TPU (convert with --io int8 or uint8 to avoid it)"
    if op.name == "DEQUANTIZE" and op.outputs and op.outputs[0] in graph.outputs:
        return "the output is dequantised to float on the CPU after the Edge TPU (convert with --io int8 or uint8)"
    return None


# -- per-op rules --------------------------------------------------------------------------------------------------


def _op_problem(op: OperatorInfo, graph: Graph) -> str | None:
    if op.name not in SUPPORTED:
        return f"{op.name} is not among the Edge TPU's supported operations ({SUPPORTED_OPS_URL})"
    for index in (*op.inputs, *op.outputs):
        if index < 0:
            continue
        t = graph.tensors[index]
        if t.constant and t.dtype in ("int32", "int64"):
            continue  # biases, shapes, axes, paddings
        if t.dtype not in QUANTIZED_TYPES:
            return f"tensor {t.name!r} is {t.dtype}; the Edge TPU only works on 8-bit quantized tensors"
        big = [d for d in t.shape[:-3] if d > 1]
        if big and not t.constant:
            return f"tensor {t.name!r} has shape {list(t.shape)}; only the 3 innermost dimensions may be larger than 1"
    rule = SUPPORTED[op.name]
    return rule(op, graph) if rule else None


def _no_fused_activation(op: OperatorInfo, graph: Graph) -> str | None:
    if op.options.get("fused_activation", 0):
        return f"{op.name} with a fused activation function is not supported; use a separate ReLU"
    return None


def _same_dilation(op: OperatorInfo, graph: Graph) -> str | None:
    w, h = op.options.get("dilation_w", 1), op.options.get("dilation_h", 1)
    if w != h:
        return f"{op.name} must use the same dilation in x and y (it has {w} and {h})"
    return None


def _fully_connected(op: OperatorInfo, graph: Graph) -> str | None:
    if op.options.get("weights_format", 0):
        return "FULLY_CONNECTED supports only the default weights format"
    out = graph.tensors[op.outputs[0]].shape
    if sum(d > 1 for d in out) > 1:
        return f"FULLY_CONNECTED output must be one-dimensional (it is {list(out)})"
    return None


def _axes(op: OperatorInfo, graph: Graph, position: int) -> tuple[int, ...] | None:
    if len(op.inputs) <= position:
        return None
    rank = len(graph.tensors[op.inputs[0]].shape)
    values = graph.constant_values(op.inputs[position])
    return tuple(a % rank for a in values) if rank else values


def _reduction(op: OperatorInfo, graph: Graph) -> str | None:
    axes = _axes(op, graph, 1)
    shape = graph.tensors[op.inputs[0]].shape
    if axes is None or not shape:
        return None
    if 0 in axes and len(shape) == 4:
        return f"{op.name} cannot reduce the batch dimension (axes {list(axes)})"
    last = len(shape) - 1
    if op.name in ("MEAN", "SUM") and last in axes and shape[last] % 4:
        return f"{op.name} over the channel axis needs a channel count that is a multiple of 4 (it is {shape[last]})"
    return None


def _pad(op: OperatorInfo, graph: Graph) -> str | None:
    pads = graph.constant_values(op.inputs[1]) if len(op.inputs) > 1 else ()
    if len(graph.tensors[op.inputs[0]].shape) == 4 and len(pads) >= 2 and (pads[0] or pads[1]):
        return f"{op.name} cannot pad the batch dimension (paddings {list(pads)})"
    return None


def _softmax(op: OperatorInfo, graph: Graph) -> str | None:
    shape = graph.tensors[op.inputs[0]].shape
    elements = graph.tensors[op.inputs[0]].size
    if sum(d > 1 for d in shape) > 1:
        return f"SOFTMAX supports only a 1-D input (it is {list(shape)})"
    if elements > SOFTMAX_MAX_ELEMENTS:
        return f"SOFTMAX supports at most {SOFTMAX_MAX_ELEMENTS} elements (it has {elements})"
    return None


def _strided_slice(op: OperatorInfo, graph: Graph) -> str | None:
    strides = graph.constant_values(op.inputs[3]) if len(op.inputs) > 3 else ()
    if any(s != 1 for s in strides):
        return f"STRIDED_SLICE is supported only with all strides 1 (they are {list(strides)})"
    if op.options.get("ellipsis_mask") or op.options.get("new_axis_mask"):
        return "STRIDED_SLICE is supported only with ellipsis_mask 0 and new_axis_mask 0"
    return None


def _split(op: OperatorInfo, graph: Graph) -> str | None:
    axis = graph.constant_values(op.inputs[0])
    if axis and len(graph.tensors[op.inputs[1]].shape) == 4 and axis[0] % 4 == 0:
        return "SPLIT cannot split the batch dimension"
    return None


def _concatenation(op: OperatorInfo, graph: Graph) -> str | None:
    problem = _no_fused_activation(op, graph)
    if problem:
        return problem
    if any(graph.tensors[i].constant for i in op.inputs) and len(op.inputs) != 2:
        return "CONCATENATION with a constant input needs exactly 2 inputs (a zero-padding op)"
    return None


def _prelu(op: OperatorInfo, graph: Graph) -> str | None:
    alpha = graph.tensors[op.inputs[1]].shape if len(op.inputs) > 1 else ()
    if sum(d > 1 for d in alpha[:-1]):
        return f"PRELU alpha must vary only along the innermost dimension (its shape is {list(alpha)}); use shared_axes=[1, 2]"
    return None


SUPPORTED: dict[str, Rule | None] = {
    "ADD": None,
    "AVERAGE_POOL_2D": _no_fused_activation,
    "CONCATENATION": _concatenation,
    "CONV_2D": _same_dilation,
    "DEPTHWISE_CONV_2D": _same_dilation,
    "EXPAND_DIMS": None,
    "FULLY_CONNECTED": _fully_connected,
    "L2_NORMALIZATION": None,
    "LOGISTIC": None,
    "LSTM": None,
    "UNIDIRECTIONAL_SEQUENCE_LSTM": None,
    "MAXIMUM": None,
    "MAX_POOL_2D": _no_fused_activation,
    "MEAN": _reduction,
    "MINIMUM": None,
    "MUL": None,
    "PACK": None,
    "PAD": _pad,
    "PADV2": _pad,
    "PRELU": _prelu,
    "QUANTIZE": None,
    "REDUCE_MAX": _reduction,
    "REDUCE_MIN": _reduction,
    "RELU": None,
    "RELU6": None,
    "RELU_N1_TO_1": None,
    "RESHAPE": None,
    "RESIZE_BILINEAR": None,
    "RESIZE_NEAREST_NEIGHBOR": None,
    "RSQRT": None,
    "SLICE": None,
    "SOFTMAX": _softmax,
    "SPACE_TO_DEPTH": None,
    "SPLIT": _split,
    "SQUARED_DIFFERENCE": None,
    "SQUEEZE": None,
    "STRIDED_SLICE": _strided_slice,
    "SUB": None,
    "SUM": _reduction,
    "TANH": None,
    "TRANSPOSE": None,
    "TRANSPOSE_CONV": None,
}


# -- the compiler itself -------------------------------------------------------------------------------------------

COMPILER = "edgetpu_compiler"


def compile_command(model: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> list[str]:
    """The ``edgetpu_compiler`` command that compiles ``model`` into ``out_dir`` (``-s`` writes the op log)."""
    return [COMPILER, "-s", "-o", str(out_dir), str(model)]


def find_compiler() -> str | None:
    return shutil.which(COMPILER)


@dataclass(frozen=True)
class CompileLog:
    """What ``edgetpu_compiler`` reported."""

    compiler_version: str | None
    succeeded: bool
    edgetpu_ops: int | None
    cpu_ops: int | None
    subgraphs: int | None
    on_chip_memory: str | None
    off_chip_memory: str | None
    op_table: tuple[dict[str, Any], ...]
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "op_table": list(self.op_table)}


_OP_ROW = re.compile(r"^([A-Z][A-Z0-9_]*|[a-z][a-z0-9-]*)\s+(\d+)\s+(.+?)\s*$")


def parse_compiler_log(stdout: str, op_log: str = "") -> CompileLog:
    """Parse ``edgetpu_compiler``'s console output (and its ``*_edgetpu.log`` op table when given)."""

    def value(pattern: str) -> str | None:
        match = re.search(pattern, stdout, re.MULTILINE)
        return match.group(1).strip() if match else None

    def number(pattern: str) -> int | None:
        text = value(pattern)
        return int(text) if text is not None else None

    total = number(r"^Total number of operations:\s*(\d+)")
    cpu = number(r"^Number of operations that will run on CPU:\s*(\d+)")
    tpu = number(r"^Number of operations that will run on Edge TPU:\s*(\d+)")
    succeeded = "Compilation succeeded" in stdout or "Model compiled successfully" in stdout
    if succeeded and tpu is None and total is not None:  # a fully mapped model prints only the total
        tpu, cpu = total, 0
    rows = []
    for line in op_log.splitlines():
        match = _OP_ROW.match(line.strip())
        if match and match.group(1) not in ("Operator",):
            rows.append({"op": match.group(1), "count": int(match.group(2)), "status": match.group(3)})
    error = None
    if not succeeded:
        errors = [line.strip() for line in stdout.splitlines() if "ERROR" in line or "error" in line.lower()]
        error = errors[0] if errors else (stdout.strip().splitlines() or ["no output"])[-1]
    return CompileLog(
        compiler_version=value(r"^Edge TPU Compiler version\s+(\S+)"),
        succeeded=succeeded,
        edgetpu_ops=tpu,
        cpu_ops=cpu,
        subgraphs=number(r"^Number of Edge TPU subgraphs:\s*(\d+)"),
        on_chip_memory=value(r"^On-chip memory used for caching model parameters:\s*(.+)$"),
        off_chip_memory=value(r"^Off-chip memory used for streaming uncached model parameters:\s*(.+)$"),
        op_table=tuple(rows),
        error=error,
    )


def compiled_path(model: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where ``edgetpu_compiler`` writes the build of ``model``: ``<stem>_edgetpu.tflite``."""
    p = Path(model)
    return Path(out_dir or p.parent) / f"{p.stem}_edgetpu.tflite"
