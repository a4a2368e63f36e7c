"""The deploy bundle on an emulated Raspberry Pi OS: Debian 12 (bookworm, Python 3.11, numpy 1.24) arm64 under
qemu-user. tests/emulated_pi.py builds the root with debootstrap, installs the bundle with its own install.sh and
defaults, and runs the installed unit's ExecStart as its user (see its docstring). Trixie is run by hand
(python tests/emulated_pi.py --suite trixie); both are in the README's support table.

Set EDGECLS_EMULATED_CACHE to a folder to keep the debootstrapped base root between runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import IN_CI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: emulated_pi.py
import emulated_pi  # noqa: E402

SCRIPT = Path(emulated_pi.__file__)


@pytest.mark.slow
def test_bookworm_installs_the_bundle_and_its_service_classifies(tmp_path):
    prefix: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
            prefix = ["sudo", "-n", "--preserve-env=CI,EDGECLS_SHARED_DATA,PIP_CERT"]
        else:
            message = "the emulated Raspberry Pi OS needs root (debootstrap, chroot, mount namespaces)"
            if IN_CI:
                pytest.fail(message + "; CI=true requires it")
            pytest.skip(message)
    problem = emulated_pi.host_problem() if not prefix else None
    if problem and "root" not in problem:
        if IN_CI:
            pytest.fail(f"{problem}; .ci/run installs what it needs, so CI=true requires it")
        pytest.skip(problem)
    report_path = tmp_path / "report.json"
    cache = os.environ.get("EDGECLS_EMULATED_CACHE")
    command = [*prefix, sys.executable, str(SCRIPT), "--suite", "bookworm", "--report", str(report_path),
               *(["--cache", cache] if cache else [])]
    done = subprocess.run(command, capture_output=True, text=True, timeout=2700)
    assert report_path.is_file(), done.stderr[-4000:]
    report = json.loads(report_path.read_text())
    assert done.returncode == 0 and report["ok"], f"{report.get('error')}\n{done.stdout[-4000:]}"
    assert report["system_python"] == "3.11" and report["system_numpy"].startswith("1.")
    assert report["video_top1"]["label"] == "Egyptian cat"
    assert report["venv_versions"]["edgecls"] and report["venv_versions"]["ai-edge-litert"]
    print(json.dumps({k: report[k] for k in ("timings_s", "venv_versions")}, indent=2))
