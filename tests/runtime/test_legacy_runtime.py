"""Re-run the runtime suite (tests/runtime) on the legacy `tflite-runtime` backend, in an environment of its own
that also stands for a device: the base install and tflite-runtime, no OpenCV, no paho-mqtt, no TensorFlow.

tflite-runtime 2.14 only installs on Python <= 3.11 with numpy < 2, so it cannot share this environment (numpy 2).
`.ci/run` builds `.venv-legacy` with `pip install -e ".[tflite-runtime,dev]"`; create it the same way to run this
locally. Tests that need an absent extra skip there with the extra's name; the slow ones (an emulated Pi) are left
to the main run.

The inner run is read from its JUnit XML, not from the last lines of its output: every failure is named, and a skip
is judged by what the environment holds (probed, not assumed): a skip for an extra the environment has is a broken
skip condition; any other skip (a tool this machine lacks) is the inner suite's own business, as in the main run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LEGACY_PYTHON = ROOT / ".venv-legacy" / "bin" / "python"
# The inner suite is the whole runtime suite: minutes on an idle machine, many more at load ~15.
TIMEOUT_S = 1800
# What a skip says when it is for a module's extra (conftest.need, needs_opencv, needs_paho, tensorflow_or_skip).
SKIP_WORDS = {
    "cv2": ("OpenCV", "'camera' extra", "edgecls[camera]"),
    "paho": ("paho-mqtt", "'mqtt' extra", "edgecls[mqtt]"),
    "tensorflow": ("TensorFlow", "tensorflow", "'convert' extra", "edgecls[convert]"),
    "jinja2": ("jinja2",),
}


@dataclass(frozen=True)
class Case:
    name: str  # tests/runtime/test_x.py::test_y[param]
    outcome: str  # passed, failed, error, skipped
    message: str


def read_junit(path: Path) -> list[Case]:
    """Every test case of a pytest JUnit XML report, with its outcome and (for a failure or a skip) its message."""
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        name = f"{module}.py::{case.get('name')}"
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                outcome = {"failure": "failed"}.get(kind, kind)
                message = found.get("message") or (found.text or "")
                break
        cases.append(Case(name, outcome, message))
    return cases


def unexpected_skips(skipped: list[Case], installed: dict[str, bool]) -> list[Case]:
    """The skips that say a module's extra is missing where the environment has that module."""
    return [
        case
        for case in skipped
        if any(
            installed.get(module) and any(word in case.message for word in words)
            for module, words in SKIP_WORDS.items()
        )
    ]


def test_skips_are_judged_by_what_the_environment_holds():
    skipped = [
        Case("a", "skipped", "needs OpenCV, the 'camera' extra: pip install 'edgecls[camera]'"),
        Case("b", "skipped", "no /dev/full on this system"),
        Case("c", "skipped", "needs paho-mqtt, the 'mqtt' extra: pip install 'edgecls[mqtt]'"),
    ]
    assert unexpected_skips(skipped, {"cv2": False, "paho": False}) == []
    assert unexpected_skips(skipped, {"cv2": False, "paho": True}) == [skipped[2]]


def _installed(python: Path) -> dict[str, bool]:
    code = (
        "import importlib.util, json, sys\n"
        "print(json.dumps({m: importlib.util.find_spec(m) is not None for m in sys.argv[1:]}))"
    )
    probe = subprocess.run(
        [str(python), "-c", code, *SKIP_WORDS], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(probe.stdout)


def test_runtime_suite_passes_on_tflite_runtime(tmp_path):
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
    report = tmp_path / "legacy.xml"
    proc = subprocess.Popen(
        [
            str(LEGACY_PYTHON),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            "not slow",
            f"--junitxml={report}",
            "tests/runtime",
        ],
        cwd=ROOT,
        env={**os.environ, "EDGECLS_TEST_BACKEND": "tflite_runtime"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:  # out of time: end the inner suite and every process it started
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    tail = "\n".join(output.splitlines()[-15:])
    assert report.exists(), f"the inner run wrote no report (exit {proc.returncode}):\n{tail}"
    cases = read_junit(report)
    failed = [
        f"{c.name}: {c.message.splitlines()[0] if c.message else ''}" for c in cases if c.outcome in ("failed", "error")
    ]
    assert not failed, "failed on tflite_runtime:\n" + "\n".join(failed)
    assert proc.returncode == 0, tail
    passed = {c.name for c in cases if c.outcome == "passed"}
    # the legacy backend really ran: this test asserts the classifier's backend is the one asked for
    assert "tests/runtime/test_coral_models.py::test_labels_come_from_the_model_metadata" in passed, tail
    skipped = [c for c in cases if c.outcome == "skipped"]
    installed = _installed(LEGACY_PYTHON)
    wrong = unexpected_skips(skipped, installed)
    assert not wrong, "skipped for an extra the environment has:\n" + "\n".join(f"{c.name}: {c.message}" for c in wrong)
    if not installed["cv2"]:  # what needs an extra this environment lacks is skipped, saying which extra
        assert any(
            "needs OpenCV, the 'camera' extra" in c.message and "pip install 'edgecls[camera]'" in c.message
            for c in skipped
        ), "\n".join(f"{c.name}: {c.message}" for c in skipped)
    version = subprocess.run(
        [str(LEGACY_PYTHON), "-c", "import numpy, tflite_runtime; print(numpy.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert version.startswith("1."), f"the legacy environment should run numpy 1.x, found {version}"
