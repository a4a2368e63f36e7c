"""Shared fixtures: the third-party data in ../shared/data, the backend under test, and tiny models built here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("EDGECLS_SHARED_DATA", ROOT.parent / "shared" / "data"))
CORAL = SHARED / "coral"
FLOWERS = SHARED / "flowers128"
WEIGHTS = SHARED / "weights"
IN_CI = os.environ.get("CI", "").lower() == "true"

# Which interpreter backend the runtime tests use; test_legacy_runtime.py re-runs them with tflite_runtime.
BACKEND = os.environ.get("EDGECLS_TEST_BACKEND", "auto")


def require(path: Path, what: str) -> Path:
    """Return ``path``, or skip (fail under CI=true) when the shared data is absent."""
    if not path.exists():
        message = f"{what} not found at {path}; the shared third-party data (../shared/data) is needed"
        if IN_CI:
            pytest.fail(message + " and CI=true requires it")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session", autouse=True)
def _image_cache_of_this_session(tmp_path_factory: pytest.TempPathFactory) -> None:
    """convert and tune keep decoded images in ~/.cache/edgecls/data by default: the suite's runs (and the command
    lines they start, which inherit the environment) use a folder of this session's instead."""
    os.environ["EDGECLS_CACHE_DIR"] = str(tmp_path_factory.mktemp("image-cache"))


@pytest.fixture(scope="session")
def coral() -> Path:
    return require(CORAL, "Coral test models")


@pytest.fixture(scope="session")
def flowers() -> Path:
    return require(FLOWERS, "flowers128 dataset")


@pytest.fixture(scope="session")
def backend() -> str:
    return BACKEND


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# The runtime suite runs on the base install too (a device, or the legacy environment of test_legacy_runtime.py):
# a test that needs an extra says which and is skipped there. In the full environment every extra is installed.
# Under CI=true the full environment has every extra: there a missing one fails the test instead (the legacy
# environment sets EDGECLS_TEST_BACKEND and may skip).
EXTRAS_OPTIONAL = not IN_CI or BACKEND != "auto"
needs_opencv = pytest.mark.skipif(
    EXTRAS_OPTIONAL and not _importable("cv2"), reason="needs OpenCV, the 'camera' extra: pip install 'edgecls[camera]'"
)
needs_paho = pytest.mark.skipif(
    EXTRAS_OPTIONAL and not _importable("paho"), reason="needs paho-mqtt, the 'mqtt' extra: pip install 'edgecls[mqtt]'"
)


def tensorflow_or_skip():  # type: ignore[no-untyped-def]
    """Import TensorFlow for building test models; it comes with the `convert` extra."""
    if BACKEND == "tflite_runtime":
        pytest.skip("models are built with TensorFlow, which the legacy tflite-runtime environment does not have")
    try:
        import tensorflow as tf
    except ImportError:
        if IN_CI:
            pytest.fail("TensorFlow (the 'convert' extra) is required under CI=true")
        pytest.skip("TensorFlow is not installed (pip install 'edgecls[convert]')")
    return tf


@pytest.fixture(scope="session")
def built_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny real TFLite models converted here with TensorFlow (see tests/model_factory.py)."""
    tensorflow_or_skip()
    from model_factory import build_all

    return build_all(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def non_classifiers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Valid TFLite models that are not image classifiers: segmentation, pose, sequence, detector."""
    tensorflow_or_skip()
    from model_factory import build_non_classifiers

    return build_non_classifiers(tmp_path_factory.mktemp("non_classifiers"))


# -- live streaming helpers: a video file, and a real Mosquitto broker --------------------------------------------


def need(module: str, extra: str, what: str) -> None:
    """Skip, saying which extra to install, where ``module`` is not installed (a base install, a device)."""
    if not _importable(module):
        message = f"needs {what}, the {extra!r} extra: pip install 'edgecls[{extra}]'"
        if not EXTRAS_OPTIONAL:
            pytest.fail(message + " (CI=true installs every extra)")
        pytest.skip(message)


def write_video(path: Path, frames: list, *, fps: float = 30.0) -> Path:  # type: ignore[type-arg]
    """Write BGR frames to an MJPG .avi with OpenCV (a real file for the OpenCV source to decode)."""
    need("cv2", "camera", "OpenCV")
    import cv2

    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened(), "OpenCV could not open a video writer"
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="session")
def cat_video(coral: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 640x480 video of 24 frames: 12 of the Coral cat, then 12 of the Coral dragonfly."""
    need("cv2", "camera", "OpenCV")
    import cv2

    cat = cv2.resize(cv2.imread(str(coral / "cat.bmp")), (640, 480))
    fly = cv2.resize(cv2.imread(str(coral / "dragonfly.bmp")), (640, 480))
    return write_video(tmp_path_factory.mktemp("video") / "cat_then_fly.avi", [cat] * 12 + [fly] * 12)


class Mosquitto:
    """A real Mosquitto broker on 127.0.0.1 and a free port, with persistence so that a restart keeps sessions."""

    def __init__(self, workdir: Path, users: dict[str, str] | None = None) -> None:
        import socket
        import subprocess

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.workdir = workdir
        self.config = workdir / "mosquitto.conf"
        access = "allow_anonymous true\n"
        if users:  # a broker that wants a user name and password (mosquitto_passwd hashes them)
            passwords = workdir / "passwords"
            for n, (name, password) in enumerate(users.items()):
                flags = ["-b"] + (["-c"] if n == 0 else [])
                subprocess.run(
                    ["mosquitto_passwd", *flags, str(passwords), name, password], check=True, capture_output=True
                )
            access = f"allow_anonymous false\npassword_file {passwords}\n"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n{access}persistence true\n"
            f"persistence_location {workdir}/\nlog_dest file {workdir}/mosquitto.log\n"
            # started as root, mosquitto would switch to its own user, which cannot write the test's folder
            + ("user root\n" if os.geteuid() == 0 else "")
        )
        self.process = None

    def start(self) -> Mosquitto:
        import shutil
        import socket
        import subprocess
        import time

        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.process = subprocess.Popen(
            [exe, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(
            f"mosquitto did not start on port {self.port}: {(self.workdir / 'mosquitto.log').read_text()}"
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture()
def mosquitto(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A running broker; skipped when mosquitto is not installed (a failure under CI=true: .ci/run installs it),
    or when paho-mqtt, the MQTT sink's library, is not (a base install)."""
    import shutil

    need("paho", "mqtt", "paho-mqtt")

    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        message = "mosquitto is not installed (apt install mosquitto)"
        if IN_CI:
            pytest.fail(message + "; .ci/run installs it, so CI=true requires it")
        pytest.skip(message)
    broker = Mosquitto(tmp_path).start()
    yield broker
    broker.stop()


# --- the convert command's tests (test_convert_pipeline, test_distill, test_tune) ---

# A convert run that takes seconds: the point is the mechanics, not the accuracy.
# Plumbing tests, not quality: a 3-epoch model on 6 test images, so the gate's drop and agreement are left open.
TINY = [
    "--input-size",
    "32",
    "--width",
    "8",
    "--depth",
    "2",
    "--epochs",
    "3",
    "--no-baseline",
    "--calibration-samples",
    "20",
    "--max-drop",
    "100",
    "--min-agreement",
    "0",
    "--patience",
    "3",
    "--batch-size",
    "8",
]


@pytest.fixture(scope="session")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated dataset: 3 classes of 14 images, 32 px."""
    from edgecls.live.demo import write_demo_dataset

    return write_demo_dataset(
        tmp_path_factory.mktemp("data") / "shapes", per_class=14, size=32, classes=("circle", "square", "stripes")
    )


def invoke(*args):  # type: ignore[no-untyped-def]
    """Run the edgecls command line in-process; every argument is turned into a string."""
    from typer.testing import CliRunner

    from edgecls.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


def convert(*args):  # type: ignore[no-untyped-def]
    """`edgecls convert ARGS...`, in-process."""
    return invoke("convert", *args)


def one_error_line(result, code: int = 1) -> str:  # type: ignore[no-untyped-def]
    """The command failed with exit ``code`` (1: an error, 3: a negative verdict) and exactly one "error: " line, and
    no traceback: return that line."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.exit_code == code and len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def ctrl_c_when(args: list[str], trigger, timeout: float = 240.0) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    """Run `python -m edgecls ARGS...` as a real process and send it SIGINT (Ctrl-C) at the first output line for
    which ``trigger(line)`` is true; return its exit code and whole output (stdout and stderr)."""
    import signal
    import subprocess
    import sys
    import time

    def as_from_a_terminal() -> None:  # a suite started as a background job hands its children an ignored SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen(
        [sys.executable, "-m", "edgecls", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"},
        preexec_fn=as_from_a_terminal,  # noqa: PLW1509 - one signal() call before exec
    )
    try:
        seen = []
        deadline = time.monotonic() + timeout
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if trigger(line):
                proc.send_signal(signal.SIGINT)
                break
            assert time.monotonic() < deadline, "".join(seen)
        rest, _ = proc.communicate(timeout=timeout)
        return proc.returncode, "".join(seen) + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


# --- the emulated Raspberry Pi (tests/runtime/test_emulated_pi.py) runs beside the rest of the session ---

_EMULATED = "test_emulated_pi.py::test_bookworm_installs_the_bundle_and_its_service_classifies"


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the emulated Pi's 8-14 minute run as soon as it is known to be wanted: most of it is waiting on
    Debian's and PyPI's servers, time the rest of the suite can use."""
    if session.config.option.collectonly:
        return
    for item in session.items:
        if item.nodeid.endswith(_EMULATED):
            item.module.start_in_background()  # type: ignore[attr-defined]
            return


def pytest_sessionfinish(session: pytest.Session) -> None:
    for item in session.items:
        if item.nodeid.endswith(_EMULATED):
            proc = item.module._background.get("proc")  # type: ignore[attr-defined]
            if proc is not None and proc.poll() is None:  # the session ended first (an interrupt, -x)
                proc.kill()
            return
