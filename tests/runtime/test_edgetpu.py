"""Edge TPU pre-flight (`edgecls check`) on Coral's published models and on models built here with one precise
problem each, the compiler log parser, and `convert --target edgetpu`'s compile step."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tensorflow_or_skip

from edgecls.device.edgetpu import parse_compiler_log, preflight
from edgecls.errors import ModelError

CORAL_CPU_MODELS = [
    "mobilenet_v1_0.25_128_quant.tflite",
    "mobilenet_v1_0.5_160_quant.tflite",
    "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite",
    "mobilenet_v2_1.0_224_quant.tflite",
]


@pytest.fixture(scope="session")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tensorflow_or_skip()
    from model_factory import build_edgetpu_cases

    return build_edgetpu_cases(tmp_path_factory.mktemp("edgetpu_cases"))


def edgecls(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgecls", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.mark.parametrize("name", CORAL_CPU_MODELS)
def test_coral_cpu_models_pass(coral, name):
    report = preflight(coral / name)
    assert report.status == "pass", report.problems or report.first_cpu_op
    assert report.ok and report.cpu_ops == 0 and report.edgetpu_ops == len(report.ops) > 20


def test_coral_edgetpu_builds_are_recognised(coral):
    report = preflight(coral / "mobilenet_v1_0.25_128_quant_edgetpu.tflite")
    assert report.status == "compiled" and report.ok
    assert [v.op for v in report.ops] == ["edgetpu-custom-op"]


def test_custom_op_is_named(coral):
    report = preflight(coral / "model_invoking_error.tflite")
    assert report.status == "fail"
    assert report.first_cpu_op.op == "fake-op-double"
    assert "not among the Edge TPU's supported operations" in report.first_cpu_op.reason


def test_int8_model_passes_and_float_io_is_noted(cases):
    assert preflight(cases["ok"]).status == "pass"
    report = preflight(cases["float_io"])
    assert report.status == "pass"
    cpu = [v for v in report.ops if not v.on_edgetpu]
    assert [v.op for v in cpu] == ["QUANTIZE", "DEQUANTIZE"]
    assert "--io int8 or uint8" in cpu[0].reason


def test_float_model_is_refused(cases):
    report = preflight(cases["float"])
    assert report.status == "fail" and not report.ok
    assert "not quantized" in report.problems[0] and "float32" in report.problems[0]


def test_dynamic_shape_is_refused_naming_the_tensor(cases):
    report = preflight(cases["dynamic"])
    assert report.status == "fail"
    assert "dynamic shape [-1, 16, 16, 3]" in report.problems[0] and "batch-1" in report.problems[0]


def test_unsupported_op_cuts_the_graph(cases):
    report = preflight(cases["leaky_relu"])
    assert report.status == "partial" and not report.ok
    first = report.first_cpu_op
    assert (first.index, first.op) == (2, "LEAKY_RELU")
    assert [v.on_edgetpu for v in report.ops] == [True, True, False, False, False, False, False]
    assert all("after op 2 (LEAKY_RELU)" in v.reason for v in report.ops[3:])


def test_op_constraint_is_named(cases):
    report = preflight(cases["dilation"])
    assert report.first_cpu_op.op == "CONV_2D"
    assert report.first_cpu_op.reason == "CONV_2D must use the same dilation in x and y (it has 1 and 2)"


def test_truncated_model_is_a_model_error(coral, tmp_path):
    data = (coral / "mobilenet_v2_1.0_224_quant.tflite").read_bytes()
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(data[:5000])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        preflight(broken)


def test_check_cli(coral, cases):
    ok = edgecls("check", str(coral / "mobilenet_v2_1.0_224_quant.tflite"))
    assert ok.returncode == 0 and "edgetpu: pass, every op (66) will run on the Edge TPU" in ok.stdout
    partial = edgecls("check", str(cases["leaky_relu"]), "--target", "edgetpu")
    assert partial.returncode == 3  # a verdict, apart from errors (1)
    assert "first CPU op #2 LEAKY_RELU" in partial.stdout
    data = json.loads(edgecls("check", str(cases["dynamic"]), "--json").stdout)
    assert data["status"] == "fail" and data["ok"] is False and data["target"] == "edgetpu"
    assert {"problems", "ops", "first_cpu_op", "edgetpu_ops", "cpu_ops"} <= set(data)
    bad = edgecls("check", str(Path(__file__)))
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


COMPILER_STDOUT = """Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 312 ms.

Input model: model.tflite
Input size: 124.51KiB
Output model: model_edgetpu.tflite
Output size: 310.23KiB
On-chip memory used for caching model parameters: 211.50KiB
On-chip memory remaining for caching model parameters: 7.67MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 16
Operation log: model_edgetpu.log

Model successfully compiled but not all operations are supported by the Edge TPU. A percentage of the model will \
instead run on the CPU, which is slower. If possible, consider updating your model to use only operations supported \
by the Edge TPU. For details, visit g.co/coral/model-reqs.
Number of operations that will run on Edge TPU: 15
Number of operations that will run on CPU: 1
See the operation log file for individual operation details.
Compilation child process completed within timeout period.
Compilation succeeded!
"""

OP_LOG = """Edge TPU Compiler version 16.0.384591198
Input: model.tflite
Output: model_edgetpu.tflite

Operator                       Count      Status

CONV_2D                        13         Mapped to Edge TPU
MEAN                           1          Mapped to Edge TPU
FULLY_CONNECTED                1          Mapped to Edge TPU
SOFTMAX                        1          Operation is otherwise supported, but not mapped due to some unspecified limitation
"""


def test_compiler_log_parser():
    log = parse_compiler_log(COMPILER_STDOUT, OP_LOG)
    assert log.succeeded and log.error is None
    assert log.compiler_version == "16.0.384591198"
    assert (log.edgetpu_ops, log.cpu_ops, log.subgraphs) == (15, 1, 1)
    assert (log.on_chip_memory, log.off_chip_memory) == ("211.50KiB", "0.00B")
    assert log.op_table[0] == {"op": "CONV_2D", "count": 13, "status": "Mapped to Edge TPU"}
    assert log.op_table[-1]["op"] == "SOFTMAX" and log.op_table[-1]["status"].startswith("Operation is otherwise")
    fully = parse_compiler_log(COMPILER_STDOUT.split("Model successfully compiled but")[0] + "Compilation succeeded!\n")
    assert (fully.edgetpu_ops, fully.cpu_ops) == (16, 0)
    failed = parse_compiler_log("Edge TPU Compiler version 16.0.384591198\nERROR: Model not quantized\n")
    assert not failed.succeeded and failed.error == "ERROR: Model not quantized"


def stand_in_compiler(folder: Path, *, fail: bool = False) -> Path:
    """An `edgetpu_compiler` stand-in on PATH (the real one is an x86-64 Debian package from Coral's repository,
    not installable here): it takes the real command line, prints the real console format, writes the op log, and
    copies the model as the "compiled" one."""
    script = folder / "edgetpu_compiler"
    body = (
        'echo "Edge TPU Compiler version 16.0.384591198"; echo "ERROR: Didn\'t find op for builtin opcode"; exit 1'
        if fail
        else f"""
[ "$1" = "-s" ] && [ "$2" = "-o" ] || {{ echo "unexpected arguments: $*"; exit 2; }}
out="$3"; model="$4"; stem="$(basename "$model" .tflite)"
cp "$model" "$out/${{stem}}_edgetpu.tflite"
cat > "$out/${{stem}}_edgetpu.log" <<'LOG'
{OP_LOG}LOG
cat <<'OUT'
{COMPILER_STDOUT}OUT
"""
    )
    script.write_text("#!/usr/bin/env bash\nset -eu\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return folder


def test_convert_edgetpu_step(cases, tmp_path, monkeypatch):
    from edgecls.convert.pipeline import edgetpu_step

    from edgecls.model.metadata import check_model_file

    model = tmp_path / "model.tflite"
    model.write_bytes(cases["ok"].read_bytes())
    manifest = {"preprocess": {"resize": "squash"}}
    monkeypatch.setenv("PATH", "/nonexistent")
    result = edgetpu_step(model, manifest, ["a", "b", "c"])
    assert result["preflight"]["status"] == "pass" and result["compiler"] is None
    assert result["command"] == "edgetpu_compiler -s -o . model.tflite"
    assert "x86-64" in result["compile_note"]

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(stand_in_compiler(bin_dir)) + os.pathsep + "/usr/bin:/bin")
    result = edgetpu_step(model, manifest, ["a", "b", "c"])
    assert result["compiled_model"] == "model_edgetpu.tflite"
    assert result["compiler"]["edgetpu_ops"] == 15 and result["compiler"]["on_chip_memory"] == "211.50KiB"
    compiled = check_model_file(tmp_path / "model_edgetpu.tflite")
    assert compiled.manifest["labels"] == ["a", "b", "c"]  # the compiled model carries the labels and manifest
    assert (tmp_path / "model_edgetpu.log").read_text() == OP_LOG
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".edgetpu.")]  # the temporary folder is gone

    (tmp_path / "model_edgetpu.tflite").unlink()
    failing = tmp_path / "bin2"
    failing.mkdir()
    monkeypatch.setenv("PATH", str(stand_in_compiler(failing, fail=True)) + os.pathsep + "/usr/bin:/bin")
    result = edgetpu_step(model, manifest, ["a", "b", "c"])
    assert result["compiled_model"] is None and result["compiler"]["succeeded"] is False
    assert "Didn't find op" in result["compiler"]["error"]
    assert not (tmp_path / "model_edgetpu.tflite").exists()
