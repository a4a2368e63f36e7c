"""The IMX500 toolchain's own environment: a virtualenv that edgecls creates on first use and keeps in the cache folder.

Sony's converter for the Raspberry Pi AI Camera (imx500-converter, with uni-tensorflow and the Model Compression
Toolkit) needs TensorFlow >= 2.14, < 2.16, numpy < 2 and Python < 3.12, so it cannot share the converter's TensorFlow
2.16+ / Keras 3 environment. This module finds a Python 3.10 or 3.11 and a Java 17 runtime (the converter's back end
is Java), creates the environment with pinned versions, and says what state it is in. It imports only the standard
library: `edgecls doctor` reads the state on any machine.

The environment is built in a sibling folder and renamed into place with a marker file written last, so an install
that was killed (Ctrl-C, SIGKILL, a full disk) is never taken for a working one: a folder without the marker, or with
other pins, is rebuilt. Everything in it is run as ``ENV/bin/python ...``: a renamed virtualenv keeps working that
way (its console scripts would still name the temporary folder).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgecls.device.doctor import Finding

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgecls.errors import ConversionError

# What pip chose for imx500-converter[tf] on Python 3.11 (issue 32); model-compression-toolkit 2.6 wants another
# mct-quantizers than this converter was released with.
PINS: tuple[str, ...] = (
    "imx500-converter[tf]==3.19.2",
    "uni-tensorflow==3.19.0",
    "sdspconv==3.19.1",
    "model-compression-toolkit==2.5.1",
    "mct-quantizers==1.6.0",
    "tensorflow==2.15.1",
    "numpy==1.26.4",
)
ENV_VAR = "EDGECLS_IMX500_ENV"  # where the environment lives (default: the cache folder)
PYTHON_VAR = "EDGECLS_IMX500_PYTHON"  # the interpreter to create it with (default: the first Python 3.10/3.11 found)
MARKER = "edgecls-imx500-env.json"  # written last: its presence (with these pins) is what makes the folder trusted
PYTHON_VERSIONS = ((3, 11), (3, 10))  # uni-tensorflow: Python < 3.12; TensorFlow 2.15: Python >= 3.9
JAVA_MAJOR = 17
ENV_BYTES = 3 * 1024**3  # the environment takes 2.3 GB, and pip needs room to unpack the wheels
JAVA_FIX = "install a Java 17 runtime (Debian/Ubuntu: sudo apt install openjdk-17-jre-headless) or put its bin/ on PATH"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class EnvState:
    """What `env_state` found. ``status``: "ready", "absent", "incomplete" (no marker: an install that did not
    finish) or "outdated" (made with other pins; rebuilt on the next use)."""

    path: Path
    status: str
    python: str | None = None  # the environment's Python version, when ready
    detail: str = ""

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


@dataclass(frozen=True)
class Toolchain:
    """A ready environment: run its ``python`` (the worker script, the converter through `converter_command`)."""

    path: Path
    python: Path
    version: str

    def converter_command(self, *args: str) -> list[str]:
        """``imxconv-tf ARGS`` run by this environment's Python (its console script names the build folder)."""
        code = "import sys; from imx500_converter.main_tf import main; sys.argv[0] = 'imxconv-tf'; sys.exit(main())"
        return [str(self.python), "-c", code, *args]


def env_dir() -> Path:
    """``$EDGECLS_IMX500_ENV``, else ``$XDG_CACHE_HOME/edgecls/imx500-env``, else ``~/.cache/edgecls/imx500-env``."""
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        return Path(explicit).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).absolute() / "edgecls" / "imx500-env"


def env_state(path: Path | None = None, *, pins: Sequence[str] = PINS) -> EnvState:
    """The state of the environment at ``path`` (default `env_dir`), from its marker; starts nothing."""
    where = Path(path) if path is not None else env_dir()
    if not where.exists():
        return EnvState(where, "absent", detail="not created yet; the first IMX500 export creates it (about 2.3 GB)")
    try:
        marker = json.loads((where / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return EnvState(
            where, "incomplete", detail="an install that did not finish (no marker); the next IMX500 export rebuilds it"
        )
    if not isinstance(marker, dict) or list(marker.get("pins") or []) != list(pins):
        return EnvState(where, "outdated", detail="made with other versions; the next IMX500 export rebuilds it")
    if not _python_of(where).exists():
        return EnvState(
            where, "incomplete", detail=f"{_python_of(where)} is missing; the next IMX500 export rebuilds it"
        )
    version = str(marker.get("python", "?"))
    return EnvState(where, "ready", python=version, detail=f"Python {version}, " + ", ".join(pins[:1] + pins[3:4]))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _python_of(env: Path) -> Path:
    return env / "bin" / "python"


def java_major(java: str = "java") -> int | None:
    """The major version of the ``java`` on PATH (17 for "17.0.15", 8 for "1.8.0_402"); None when there is none or
    it does not run."""
    found = shutil.which(java)
    if found is None:
        return None
    try:
        proc = subprocess.run([found, "-version"], check=False, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_java_version(proc.stderr + proc.stdout)


def parse_java_version(text: str) -> int | None:
    """The major version in ``java -version``'s output (``openjdk version "17.0.15" 2025-04-15``)."""
    found = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not found:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def check_java() -> int:
    """The Java major version; ConversionError naming the fix when there is no Java 17 or newer."""
    major = java_major()
    if major is None:
        raise ConversionError(
            f"the IMX500 converter (imxconv-tf) runs on Java {JAVA_MAJOR}, and no working `java` is on PATH; {JAVA_FIX}"
        )
    if major < JAVA_MAJOR:
        raise ConversionError(
            f"the IMX500 converter (imxconv-tf) runs on Java {JAVA_MAJOR}, and the `java` on PATH "
            f"is Java {major}; {JAVA_FIX}"
        )
    return major


def python_candidates() -> list[Path]:
    """Where a Python 3.10/3.11 may be, in the order tried: $EDGECLS_IMX500_PYTHON alone when set, else this
    interpreter, python3.11 and python3.10 on PATH, and pyenv's versions (~/.pyenv/versions/3.11.*, 3.10.*)."""
    explicit = os.environ.get(PYTHON_VAR)
    if explicit:
        return [Path(explicit).expanduser()]
    found: list[Path] = [Path(sys.executable)] if sys.version_info[:2] in PYTHON_VERSIONS else []
    for major, minor in PYTHON_VERSIONS:
        on_path = shutil.which(f"python{major}.{minor}")
        if on_path:
            found.append(Path(on_path))
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    for major, minor in PYTHON_VERSIONS:
        versions = sorted(root.glob(f"{major}.{minor}.*"), key=lambda p: _version_key(p.name), reverse=True)
        found += [v / "bin" / f"python{major}.{minor}" for v in versions]
    unique: list[Path] = []
    for candidate in found:
        if candidate not in unique:
            unique.append(candidate)
    return unique


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name))


def find_python() -> tuple[Path, str]:
    """A Python 3.10 or 3.11 that can make a virtualenv: (its real executable, its version). ConversionError naming
    the fix when none is found."""
    tried = []
    for candidate in python_candidates():
        probe = _probe_python(candidate)
        if probe is not None:
            return probe
        tried.append(str(candidate))
    where = (
        f"${PYTHON_VAR}={os.environ[PYTHON_VAR]} is not a Python 3.10/3.11 with venv"
        if os.environ.get(PYTHON_VAR)
        else "none found: looked for python3.11 and python3.10 on PATH and under ~/.pyenv/versions"
    )
    raise ConversionError(
        f"the IMX500 toolchain (uni-tensorflow) needs Python 3.10 or 3.11 to make its environment, "
        f"{where}; install one (Debian 12: sudo apt install python3.11-venv; or pyenv install 3.11) "
        f"or set {PYTHON_VAR} to one"
    )


def _probe_python(candidate: Path) -> tuple[Path, str] | None:
    code = "import sys, venv, ensurepip; print(sys.executable); print('.'.join(map(str, sys.version_info[:3])))"
    try:
        proc = subprocess.run(
            [str(candidate), "-c", code], check=False, capture_output=True, text=True, timeout=60, env=_clean_env()
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = proc.stdout.split()
    if proc.returncode != 0 or len(lines) != 2:
        return None
    version = tuple(int(p) for p in lines[1].split(".")[:2])
    return (Path(lines[0]), lines[1]) if version in PYTHON_VERSIONS else None


def _clean_env() -> dict[str, str]:
    """This process's environment without what would make another Python read this one's packages."""
    # ... nor pick another Keras: tf-keras or the QAT toolkit set TF_USE_LEGACY_KERAS=1 in this process, and the
    # toolchain's TensorFlow 2.15 then looks for a tf_keras package it does not have ("Keras cannot be imported")
    dropped = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "TF_USE_LEGACY_KERAS", "KERAS_BACKEND")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def worker_env() -> dict[str, str]:
    """The environment the toolchain's processes run with: clean (see `_clean_env`), TensorFlow's native log quiet."""
    return {**_clean_env(), "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


def ensure_env(progress: Progress | None = None, *, path: Path | None = None, pins: Sequence[str] = PINS) -> Toolchain:
    """The toolchain environment, created first when it is absent, incomplete or outdated (a few minutes and about
    2.3 GB, from PyPI). ``progress`` gets a short line per step of pip. Two processes asking at once create it once
    (a lock beside it). Raises ConversionError naming the fix (no suitable Python, no room, pip failed)."""
    say = progress or (lambda message: None)
    where = Path(path) if path is not None else env_dir()
    state = env_state(where, pins=pins)
    if state.ready:
        return Toolchain(where, _python_of(where), state.python or "?")
    with _locked(where, say) as lock:
        state = env_state(where, pins=pins)  # another process may have made it while this one waited
        if not state.ready:
            _create(where, state, pins, say, lock=lock)
            state = env_state(where, pins=pins)
    if not state.ready:  # pragma: no cover - _create raises on every failure it can see
        raise ConversionError(f"the IMX500 toolchain environment at {where} is {state.status}: {state.detail}")
    return Toolchain(where, _python_of(where), state.python or "?")


@contextlib.contextmanager
def _locked(where: Path, say: Progress) -> Iterator[int]:
    """An exclusive lock on a file beside ``where``; yields its descriptor (the builders' processes inherit it, so
    the lock lasts as long as a pip whose edgecls was killed under it)."""
    lock_path = where.parent / f".{where.name}.lock"
    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        lock_path.touch()
    except OSError as exc:
        raise ConversionError(
            f"cannot create the IMX500 toolchain environment in {where.parent} ({exc.strerror}); "
            f"set {ENV_VAR} to a writable folder"
        ) from None
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another edgecls that is creating the IMX500 toolchain environment in {where}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield handle.fileno()


def _create(where: Path, state: EnvState, pins: Sequence[str], say: Progress, *, lock: int) -> None:
    """Build the environment in a sibling folder, install ``pins``, write the marker, rename it into place. Called
    with the lock held (its descriptor ``lock`` is handed to pip and venv), so any sibling build folder left is a
    killed install's: removed first."""
    for stale in where.parent.glob(f".{where.name}.new-*"):
        _remove(stale)
    python, version = find_python()
    free = shutil.disk_usage(where.parent).free
    if pins and free < ENV_BYTES:
        raise ConversionError(
            f"the IMX500 toolchain environment needs about {ENV_BYTES / 1024**3:.0f} GB free in "
            f"{where.parent} ({free / 1024**3:.1f} GB free); free some space, or set {ENV_VAR} to "
            "a folder on another disk"
        )
    why = {
        "absent": "",
        "incomplete": " (the one there did not finish installing)",
        "outdated": " (the one there has other versions)",
    }.get(state.status, "")
    say(
        f"creating the IMX500 toolchain environment in {where}{why}: Python {version}, {', '.join(pins) or 'no packages'}"
        " (once; a few minutes and about 2.3 GB)"
    )
    build = Path(tempfile.mkdtemp(prefix=f".{where.name}.new-", dir=where.parent))
    try:
        build.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700
        _run_logged([str(python), "-m", "venv", str(build)], build, say, lock=lock, what="python -m venv")
        if pins:
            _run_logged(
                [str(_python_of(build)), "-m", "pip", "install", "--progress-bar", "off", *pins],
                build,
                say,
                lock=lock,
                what="pip install",
            )
        marker = {"pins": list(pins), "python": version, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (build / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        if where.exists() or where.is_symlink():
            old = where.with_name(f".{where.name}.new-old-{os.getpid()}")  # named like a build: removed if left
            os.rename(where, old)
            _remove(old)
        os.rename(build, where)
    except OSError as exc:
        raise ConversionError(
            f"cannot create the IMX500 toolchain environment in {where} ({exc.strerror or exc}); "
            f"is the disk full? set {ENV_VAR} to another folder"
        ) from None
    finally:
        if build.exists():
            shutil.rmtree(build, ignore_errors=True)
    say(f"the IMX500 toolchain environment is ready in {where}")


def _remove(path: Path) -> None:
    """Remove a folder, or a link (never what it points to)."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _run_logged(command: list[str], build: Path, say: Progress, *, lock: int, what: str) -> None:
    """Run ``command``, passing pip's steps to ``say`` (see `pip_event`); its whole output goes to a log beside the
    environment. ConversionError with the last lines when it fails."""
    log_path = build.parent / f"{build.name.split('.new-')[0].lstrip('.')}.log"
    tail: list[str] = []
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_clean_env(), pass_fds=(lock,)
        )
        try:
            for line in proc.stdout or ():
                log.write(line)
                tail = (tail + [line.rstrip()])[-20:]
                event = pip_event(line)
                if event:
                    say(event)
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if code != 0:
        reason = next((line for line in reversed(tail) if line.startswith("ERROR")), tail[-1] if tail else "")
        hint = (
            " (no network? PyPI must be reachable for the first IMX500 export)"
            if re.search(r"No matching distribution|Could not find a version|connection|resolve", reason, re.IGNORECASE)
            else ""
        )
        raise ConversionError(
            f"creating the IMX500 toolchain environment failed: {what} exited with code {code}: "
            f"{reason.strip()[:300]}{hint}; the whole output is in {log_path}"
        )


def pip_event(line: str) -> str | None:
    """A short progress line for one line of pip's output, or None for the lines not worth showing: the large
    downloads (they are the wait), the install, the end."""
    text = line.strip()
    found = re.match(r"Downloading (\S+?)(?:-cp\S+|-py\S+)?\.whl \(([\d.]+) ([kMG]B)\)", text)
    if found:
        size = float(found.group(2)) * {"kB": 1e3, "MB": 1e6, "GB": 1e9}[found.group(3)]
        return f"downloading {found.group(1)} ({found.group(2)} {found.group(3)})" if size >= 10e6 else None
    if text.startswith("Installing collected packages:"):
        count = len(text.split(":", 1)[1].split(","))
        return f"installing {count} packages"
    if text.startswith("Successfully installed"):
        return f"installed {len(text.split()) - 2} packages"
    return None


def doctor_check() -> list[Finding]:
    """`edgecls doctor`'s line for the host side of the Raspberry Pi AI Camera: the toolchain's environment that
    `edgecls export imx500` creates on first use (read from its marker file; nothing is imported from it)."""
    from edgecls.device.doctor import INFO, OK, Finding

    state = env_state()
    if state.ready:
        return [Finding("imx500 toolchain", OK, f"{state.path}: {state.detail}")]
    fix = "edgecls export imx500 RUN creates it (host only; needs Java 17)" if state.status == "absent" else None
    return [Finding("imx500 toolchain", INFO, f"{state.path}: {state.detail}", fix)]
