"""The deploy bundle on an emulated Raspberry Pi OS: Debian 12 (bookworm, Python 3.11, numpy 1.24) arm64 under
qemu-user. tests/emulated_pi.py builds the root with debootstrap, installs the bundle with its own install.sh and
defaults, and runs the installed unit's ExecStart as its user (see its docstring); then the AI Camera bundle with
stub packages for imx500-all and imx500-tools and the picamera2 stand-in of tests/picamera2_standin. Trixie is run
by hand (python tests/emulated_pi.py --suite trixie); both are in the README's support table.

The run takes 8-14 minutes, much of it waiting on Debian's and PyPI's servers, so when this test is among those
collected, conftest starts it in the background as the session begins (`start_in_background`) and the test collects
its result; run alone, it runs in the foreground. Set EDGECLS_EMULATED_CACHE to a folder to keep the debootstrapped
base root between runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import IN_CI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: emulated_pi.py
import emulated_pi

SCRIPT = Path(emulated_pi.__file__)
TIMEOUT_S = 2700
_background: dict[str, object] = {}


def command(report_path: Path) -> tuple[list[str] | None, str | None]:
    """The command that runs the emulated Pi, or why it cannot run here."""
    prefix: list[str] = []
    if os.geteuid() != 0:
        if (
            shutil.which("sudo")
            and subprocess.run(["sudo", "-n", "true"], capture_output=True, check=False).returncode == 0
        ):
            prefix = ["sudo", "-n", "--preserve-env=CI,EDGECLS_SHARED_DATA,PIP_CERT"]
        else:
            return None, "the emulated Raspberry Pi OS needs root (debootstrap, chroot, mount namespaces)"
    problem = emulated_pi.host_problem() if not prefix else None
    if problem and "root" not in problem:
        return None, f"{problem}; .ci/run installs what it needs"
    cache = os.environ.get("EDGECLS_EMULATED_CACHE")
    return [
        *prefix,
        sys.executable,
        str(SCRIPT),
        "--suite",
        "bookworm",
        "--report",
        str(report_path),
        *(["--cache", cache] if cache else []),
    ], None


def start_in_background() -> None:
    """Start the run now, for the test to collect later (conftest calls this once the test is collected)."""
    report_path = Path(tempfile.mkdtemp(prefix="edgecls-emulated-")) / "report.json"
    cmd, _ = command(report_path)
    if cmd is None:
        return
    log = open(report_path.with_name("output.txt"), "w+", encoding="utf-8")  # noqa: SIM115 (read by the test)
    _background.update(
        proc=subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True), report=report_path, log=log
    )


@pytest.mark.slow
def test_bookworm_installs_the_bundle_and_its_service_classifies(tmp_path):
    if _background:
        proc, report_path, log = _background["proc"], _background["report"], _background["log"]
        try:
            proc.wait(timeout=TIMEOUT_S)  # type: ignore[union-attr]
        finally:
            if proc.poll() is None:  # type: ignore[union-attr]
                proc.kill()  # type: ignore[union-attr]
        log.seek(0)  # type: ignore[union-attr]
        output, returncode = log.read(), proc.returncode  # type: ignore[union-attr]
    else:
        report_path = tmp_path / "report.json"
        cmd, why = command(report_path)
        if cmd is None:
            if IN_CI:
                pytest.fail(f"{why}; CI=true requires it")
            pytest.skip(why)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        output, returncode = done.stdout + done.stderr, done.returncode
    assert Path(report_path).is_file(), output[-4000:]  # type: ignore[arg-type]
    report = json.loads(Path(report_path).read_text())  # type: ignore[arg-type]
    assert returncode == 0 and report["ok"], f"{report.get('error')}\n{output[-4000:]}"
    assert report["system_python"] == "3.11" and report["system_numpy"].startswith("1.")
    assert report["video_top1"]["label"] == "Egyptian cat"
    assert report["venv_versions"]["edgecls"] and report["venv_versions"]["ai-edge-litert"]
    # the AI Camera bundle: its stub packages installed by apt-get, the .rpk made by the stub imx500-package, the
    # service classifying with the stand-in sensor's outputs and on-sensor times
    ai = report["ai_camera"]
    assert ai["packages"] == ["imx500-all", "0.0.0~edgecls.stub", "imx500-tools", "0.0.0~edgecls.stub"]
    assert ai["top1"]["label"] == "rose" and ai["latency_ms"]["invoke"] == 4.1
    print(json.dumps({k: report[k] for k in ("timings_s", "venv_versions")}, indent=2))
