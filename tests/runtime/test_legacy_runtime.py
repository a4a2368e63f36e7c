"""Re-run the runtime suite (tests/runtime) on the legacy `tflite-runtime` backend, in an environment of its own
that also stands for a device: the base install and tflite-runtime, no OpenCV, no paho-mqtt, no TensorFlow.

tflite-runtime 2.14 only installs on Python <= 3.11 with numpy < 2, so it cannot share this environment (numpy 2).
`.ci/run` builds `.venv-legacy` with `pip install -e ".[tflite-runtime,dev]"`; create it the same way to run this
locally. Tests that need an absent extra skip there with the extra's name; the slow ones (an emulated Pi) are left
to the main run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LEGACY_PYTHON = ROOT / ".venv-legacy" / "bin" / "python"


def test_runtime_suite_passes_on_tflite_runtime():
    if os.environ.get("EDGECLS_TEST_BACKEND"):
        pytest.skip("already inside the legacy run")
    if not LEGACY_PYTHON.exists():
        reason = (
            "no .venv-legacy: tflite-runtime needs its own environment with numpy<2 (Python <= 3.11); create it with "
            "python3 -m venv .venv-legacy && .venv-legacy/bin/pip install -e '.[tflite-runtime,dev]'"
        )
        if os.environ.get("CI", "").lower() == "true" and sys.version_info < (3, 12):
            pytest.fail(reason + " (.ci/run builds it; CI=true requires it)")
        pytest.skip(reason)
    env = {**os.environ, "EDGECLS_TEST_BACKEND": "tflite_runtime"}
    proc = subprocess.run(
        [str(LEGACY_PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", "tests/runtime"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    tail = "\n".join(proc.stdout.splitlines()[-15:])
    assert proc.returncode == 0, tail
    assert " passed" in tail and " failed" not in tail
    # what needs an extra this environment lacks is skipped, saying which extra
    assert "needs OpenCV, the 'camera' extra" in proc.stdout and "pip install 'edgecls[camera]'" in proc.stdout
    version = subprocess.run(
        [str(LEGACY_PYTHON), "-c", "import numpy, tflite_runtime; print(numpy.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert version.startswith("1."), f"the legacy environment should run numpy 1.x, found {version}"
