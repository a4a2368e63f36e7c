"""The delegate loading path against real shared libraries: a no-op TFLite delegate compiled here with gcc
(tests/native/noop_delegate.c), an absent libedgetpu, and Coral's real Edge TPU builds."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BACKEND, IN_CI, ROOT

from edgecls import Classifier
from edgecls.errors import ConfigError, DelegateError, ModelError

NATIVE = ROOT / "tests" / "native" / "noop_delegate.c"


@pytest.fixture(scope="session")
def noop_delegate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        if IN_CI:
            pytest.fail("gcc is needed to build the test delegate, and CI=true requires it")
        pytest.skip("no C compiler (gcc) to build the test delegate")
    out = tmp_path_factory.mktemp("native") / "libnoop_delegate.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o", str(out), str(NATIVE)], check=True)
    return out


@pytest.fixture
def models(coral: Path, tmp_path: Path) -> dict[str, Path]:
    """A CPU model alone, and a CPU model with its real Edge TPU build beside it."""
    alone = tmp_path / "alone"
    pair = tmp_path / "pair"
    alone.mkdir()
    pair.mkdir()
    shutil.copy(coral / "mobilenet_v1_0.5_160_quant.tflite", alone / "mobilenet.tflite")
    shutil.copy(coral / "mobilenet_v1_0.5_160_quant.tflite", pair / "mobilenet.tflite")
    shutil.copy(coral / "mobilenet_v1_0.5_160_quant_edgetpu.tflite", pair / "mobilenet_edgetpu.tflite")
    only = tmp_path / "only"
    only.mkdir()
    shutil.copy(coral / "mobilenet_v1_0.5_160_quant_edgetpu.tflite", only / "mobilenet_edgetpu.tflite")
    return {
        "cpu": alone / "mobilenet.tflite",
        "pair": pair / "mobilenet.tflite",
        "only": only / "mobilenet_edgetpu.tflite",
    }


def log_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_external_delegate_gets_its_options_and_the_model_runs(noop_delegate, models, coral, tmp_path):
    log = tmp_path / "delegate.log"
    with Classifier(
        models["cpu"], delegate=noop_delegate, delegate_options={"log": log, "mode": "x"}, backend=BACKEND
    ) as clf:
        top = clf.classify(coral / "cat.bmp", top_k=1)[0]
        assert clf.describe()["delegate"] == {
            "kind": "external",
            "library": str(noop_delegate),
            "options": {"log": str(log), "mode": "x"},
        }
    assert "cat" in top.label
    lines = log_lines(log)
    assert f"log={log}" in lines and "mode=x" in lines and "created" in lines
    assert "prepare" in lines  # the interpreter really handed its graph to our library


def test_edgetpu_delegate_library_and_device_option(noop_delegate, models, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECLS_EDGETPU_LIBRARY", str(noop_delegate))
    log = tmp_path / "edgetpu.log"
    with Classifier(
        models["cpu"], delegate="edgetpu", device="USB:1", delegate_options={"log": log}, backend=BACKEND
    ) as clf:
        assert clf.describe()["delegate"]["kind"] == "edgetpu"
        assert clf.describe()["delegate"]["options"]["device"] == "usb:1"
    assert "device=usb:1" in log_lines(log)


@pytest.mark.parametrize("device", ["usb:x", "gpu", "pci:", "usb:0:1", ""])
def test_bad_device_strings_are_config_errors(device, models):
    with pytest.raises(ConfigError, match="expected usb, usb:N, pci, pci:N"):
        Classifier(models["cpu"], delegate="edgetpu", device=device, backend=BACKEND)


def test_device_without_edgetpu_delegate_is_an_error(models, noop_delegate):
    with pytest.raises(ConfigError, match="needs delegate='edgetpu'"):
        Classifier(models["cpu"], delegate=noop_delegate, device="usb", backend=BACKEND)
    with pytest.raises(ConfigError, match="without a delegate"):
        Classifier(models["cpu"], device="usb", backend=BACKEND)


def test_absent_edgetpu_library_names_the_package(models, monkeypatch):
    monkeypatch.setenv("EDGECLS_EDGETPU_LIBRARY", "/nonexistent/libedgetpu.so.1")
    with pytest.raises(DelegateError, match=r"libedgetpu.so.1 was not found .*apt-get install libedgetpu1-std"):
        Classifier(models["cpu"], delegate="edgetpu", backend=BACKEND)


def test_delegate_that_finds_no_device(noop_delegate, models, monkeypatch):
    monkeypatch.setenv("EDGECLS_EDGETPU_LIBRARY", str(noop_delegate))
    with pytest.raises(
        DelegateError, match=r"failed to start .*asked to fail.*no Edge TPU device found at usb:0"
    ) as err:
        Classifier(
            models["cpu"], delegate="edgetpu", device="usb:0", delegate_options={"fail_create": "1"}, backend=BACKEND
        )
    assert "\n" not in str(err.value)


def test_delegate_that_cannot_take_the_graph(noop_delegate, models):
    with pytest.raises(DelegateError, match=r"could not take .*mobilenet.tflite"):
        Classifier(models["cpu"], delegate=noop_delegate, delegate_options={"fail_prepare": "1"}, backend=BACKEND)


def test_edgetpu_sibling_is_used_and_a_non_tpu_library_is_named(noop_delegate, models, monkeypatch):
    monkeypatch.setenv("EDGECLS_EDGETPU_LIBRARY", str(noop_delegate))
    # The delegate loads, but it is not libedgetpu: the compiled sibling's edgetpu-custom-op stays unresolved.
    with pytest.raises(DelegateError, match=r"did not take edgetpu-custom-op in .*mobilenet_edgetpu.tflite"):
        Classifier(models["pair"], delegate="edgetpu", backend=BACKEND)


def test_edgetpu_build_without_delegate_says_so(models):
    with pytest.raises(ModelError, match=r"compiled for the Edge TPU .*--delegate edgetpu"):
        Classifier(models["only"], backend=BACKEND)


def test_cpu_fallback_is_loud_and_uses_the_cpu_model(noop_delegate, models, coral, monkeypatch, caplog):
    monkeypatch.setenv("EDGECLS_EDGETPU_LIBRARY", str(noop_delegate))
    with caplog.at_level(logging.WARNING, logger="edgecls"):
        clf = Classifier(
            models["pair"],
            delegate="edgetpu",
            delegate_options={"fail_create": "1"},
            allow_cpu_fallback=True,
            backend=BACKEND,
        )
    with clf:
        assert clf.path == models["pair"]  # the CPU model, not mobilenet_edgetpu.tflite
        assert clf.delegate is None
        assert "no Edge TPU device found" in clf.fallback_reason
        assert clf.describe()["fallback_reason"] == clf.fallback_reason
        assert "cat" in clf.classify(coral / "cat.bmp", top_k=1)[0].label
    assert any("DELEGATE NOT USED" in r.getMessage() for r in caplog.records)


def test_cpu_fallback_needs_a_cpu_model(noop_delegate, models, monkeypatch):
    monkeypatch.setenv("EDGECLS_EDGETPU_LIBRARY", str(noop_delegate))
    with pytest.raises(DelegateError, match="no CPU model to fall back to"):
        Classifier(
            models["only"],
            delegate="edgetpu",
            delegate_options={"fail_create": "1"},
            allow_cpu_fallback=True,
            backend=BACKEND,
        )


def edgecls(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "edgecls", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_cli_delegate_errors_and_fallback(noop_delegate, models, coral):
    env = {"EDGECLS_EDGETPU_LIBRARY": str(noop_delegate)}
    args = [
        "classify",
        str(models["pair"]),
        str(coral / "cat.bmp"),
        "--backend",
        BACKEND,
        "--delegate",
        "edgetpu",
        "--delegate-option",
        "fail_create=1",
    ]
    failed = edgecls(*args, env=env)
    assert failed.returncode == 1
    assert failed.stderr.startswith("error: the Edge TPU delegate failed to start") and "Traceback" not in failed.stderr
    fallback = edgecls(*args, "--allow-cpu-fallback", env=env)
    assert fallback.returncode == 0, fallback.stderr
    assert "WARNING: DELEGATE NOT USED, running on the CPU" in fallback.stderr
    assert "cat" in fallback.stdout
    bad = edgecls("classify", str(models["cpu"]), str(coral / "cat.bmp"), "--delegate-option", "nokey")
    assert bad.returncode == 1 and "--delegate-option expects KEY=VALUE" in bad.stderr


def test_runtime_version_mismatch_is_named(coral):
    """libedgetpu reports a model compiled for a newer runtime when the interpreter prepares the custom op."""
    from edgecls.model.delegates import LoadedDelegate, interpreter_error
    from edgecls.model.metadata import check_model_file

    info = check_model_file(coral / "mobilenet_v1_0.25_128_quant_edgetpu.tflite")
    message = (
        "Internal: Unsupported data type in custom op handler: 0Node number 0 (edgetpu-custom-op) failed to "
        "prepare. Failed to prepare for TPU. Failed precondition: Package requires runtime version (14), which "
        "is newer than this runtime version (13)."
    )
    err = interpreter_error(LoadedDelegate("edgetpu", "libedgetpu.so.1"), info, message)
    assert "compiled for a newer Edge TPU runtime" in str(err)
    assert "apt-get install --only-upgrade libedgetpu1-std" in str(err) and "--min_runtime_version" in str(err)


def test_bench_through_a_delegate(noop_delegate, models, tmp_path):
    import json

    log = tmp_path / "bench.log"
    result = edgecls(
        "bench",
        str(models["cpu"]),
        "--delegate",
        str(noop_delegate),
        "--delegate-option",
        f"log={log}",
        "--runs",
        "5",
        "--warmup",
        "1",
        "--json",
        "--backend",
        BACKEND,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["delegate"]["kind"] == "external" and data["delegate"]["options"] == {"log": str(log)}
    assert "prepare" in log_lines(log)
