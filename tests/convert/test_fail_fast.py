"""A typo is one error line before TensorFlow loads; a real run shows no native TensorFlow log line at the default
verbosity; MobileNetV2 takes its width from the weights file the user gives."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT, TINY, WEIGHTS, require, tensorflow_or_skip
from edgecls.convert.tflog import is_native_log_line

# The command line, with TensorFlow (and Keras) made impossible to import: a check that needs it fails differently.
WITHOUT_TENSORFLOW = textwrap.dedent("""
    import sys
    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
                raise ImportError("tensorflow was imported before the arguments were checked")
    sys.meta_path.insert(0, Refuse())
    from edgecls.__main__ import console
    sys.argv = ["edgecls", *sys.argv[1:]]
    console()
""")


def _without_tensorflow(*args: object, cwd: Path) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_TENSORFLOW, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    "case",
    [
        "missing data",
        "finished out",
        "out is a file",
        "missing weights",
        "alpha the weights contradict",
        "missing extra data",
        "missing model",
    ],
)
def test_a_typo_is_one_error_line_before_tensorflow_loads(case: str, tmp_path: Path, shapes: Path) -> None:
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / "report.json").write_text("{}")
    (tmp_path / "file").write_text("x")
    v2 = str(WEIGHTS / "mobilenet_v2_1.0_224_no_top.h5")
    args, expected = {
        "missing data": (["convert", "missing/", "--out", "x"], "dataset folder not found: missing"),
        "finished out": (["convert", shapes, "--out", finished], "already holds a finished run; pass --overwrite"),
        "out is a file": (["convert", shapes, "--out", tmp_path / "file"], "is a file; give a folder"),
        "missing weights": (
            ["convert", shapes, "--out", "x", "--arch", "mobilenet_v2", "--weights", "nope.h5"],
            "--weights 'nope.h5'",
        ),
        "alpha the weights contradict": (
            ["convert", shapes, "--out", "x", "--arch", "mobilenet_v2", "--weights", v2, "--alpha", "0.35"],
            "holds mobilenet_v2 alpha 1.0 weights",
        ),
        "missing extra data": (
            ["convert", shapes, "--out", "x", "--extra-data", "nowhere"],
            "--extra-data nowhere: not a folder",
        ),
        "missing model": (
            ["convert", "nope.keras", "--calibration", shapes, "--out", "x"],
            "model not found: nope.keras",
        ),
    }[case]
    done = _without_tensorflow(*args, cwd=tmp_path)
    lines = done.stderr.splitlines()
    assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert expected in lines[0] and "tensorflow was imported" not in lines[0]
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_a_run_prints_no_native_tensorflow_log_line_and_says_where_it_trains(shapes: Path, tmp_path: Path) -> None:
    tensorflow_or_skip()
    done = subprocess.run(
        [sys.executable, "-m", "edgecls", "convert", shapes, "--out", tmp_path / "run", *TINY],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    native = [line for line in done.stderr.splitlines() if is_native_log_line(line)]
    assert native == [], native
    assert "training on the CPU" in done.stderr or "training on the GPU" in done.stderr
    verbose = subprocess.run(
        [sys.executable, "-m", "edgecls", "-v", "convert", shapes, "--out", tmp_path / "run", "--overwrite", *TINY],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        check=False,
    )
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert "image cache" in verbose.stderr.lower() or "cache" in verbose.stderr  # the warm run read the cache


def test_native_log_lines_are_recognised() -> None:
    assert is_native_log_line("I0000 00:00:1796680460.000300   14482 cudart_stub.cc:31] Could not find cuda drivers")
    assert is_native_log_line("W1207 21:46:44.123456  1234 tf_tfl_flatbuffer_helpers.cc:365] Ignored output_format.")
    assert is_native_log_line("E0000 00:00:1796680460.000300   14482 cuda_executor.cc:1228] failed call to cuInit")
    assert is_native_log_line("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR")
    assert not is_native_log_line("error: dataset folder not found: missing")
    assert not is_native_log_line("F0000 00:00:1796680460.000300   14482 check.cc:1] Check failed")  # fatal: shown


def test_mobilenet_v2_builds_from_the_shared_weights_without_an_alpha(tmp_path: Path) -> None:
    tensorflow_or_skip()
    weights = require(WEIGHTS / "mobilenet_v2_1.0_224_no_top.h5", "MobileNetV2 1.0 ImageNet weights")
    from edgecls.convert.api import import_tensorflow
    from edgecls.convert.models import create_model
    from edgecls.convert.options import ConvertOptions

    import_tensorflow()
    options = ConvertOptions.create(tmp_path, arch="mobilenet_v2", weights=str(weights), input_size=96)
    assert options.alpha == 1.0
    model = create_model("mobilenet_v2", options.model_spec(3))
    base = next(layer for layer in model.layers if hasattr(layer, "layers"))
    assert base.count_params() == 2_257_984  # the official no-top count: the ImageNet weights loaded
