"""The wheels a deploy bundle carries: edgecls's own (built from this checkout, kept in a cache by content) and, for
a device with no internet, every dependency's aarch64 wheel for the device's Python and numpy."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from edgecls import __version__
from edgecls.errors import ConfigError, WriteError
from edgecls.fsutil import atomic_write_bytes, os_reason

# `--wheelhouse TARGET`: the device's Python and the numpy its system packages (picamera2's companions) are built
# against, as Raspberry Pi OS ships them (same as Debian's python3 and python3-numpy).
WHEELHOUSE_TARGETS: dict[str, dict[str, str]] = {
    "bookworm": {"python": "3.11", "numpy": "1.24.2", "os": "Raspberry Pi OS / Debian 12 (bookworm), 64-bit"},
    "trixie": {"python": "3.13", "numpy": "2.2.4", "os": "Raspberry Pi OS / Debian 13 (trixie), 64-bit"},
}
AARCH64_PLATFORMS = (
    "manylinux_2_36_aarch64",
    "manylinux_2_35_aarch64",
    "manylinux_2_34_aarch64",
    "manylinux_2_31_aarch64",
    "manylinux_2_28_aarch64",
    "manylinux_2_27_aarch64",
    "manylinux_2_26_aarch64",
    "manylinux_2_24_aarch64",
    "manylinux_2_17_aarch64",
    "manylinux2014_aarch64",
    "linux_aarch64",
)


def source_root() -> Path | None:
    """The checkout this edgecls runs from (None when it is an installed package)."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    return root if pyproject.is_file() and 'name = "edgecls"' in pyproject.read_text(encoding="utf-8") else None


def wheel_cache() -> Path:
    """Where built wheels are kept: ``$XDG_CACHE_HOME/edgecls/wheels`` (an absolute XDG_CACHE_HOME; else
    ``~/.cache``). Raises ConfigError when there is no home folder to put it in."""
    base = os.environ.get("XDG_CACHE_HOME") or ""
    if not os.path.isabs(base):  # the XDG specification: a relative path is ignored
        try:
            base = str(Path.home() / ".cache")
        except (RuntimeError, KeyError):
            raise ConfigError(
                "no wheel cache: this user has no home folder and XDG_CACHE_HOME is not set; set it to "
                "a writable folder"
            ) from None
    return Path(base) / "edgecls" / "wheels"


def build_wheel(root: Path | None = None, cache: Path | None = None) -> Path:
    """The edgecls wheel of the checkout ``root`` (this one by default), built with pip in a copy of its sources.

    Wheels are kept under ``cache`` (default: `wheel_cache`), one per content hash, so a second bundle of unchanged
    sources reuses the first wheel. A cache that cannot be used (XDG_CACHE_HOME a file, a home folder that cannot
    be written) is a ConfigError that says so; `build_bundle` falls back to a temporary folder instead."""
    return _build_wheel(root, cache, scratch=None)[0]


def build_wheel_in(scratch: Path) -> tuple[Path, str | None]:
    """This checkout's wheel, from the cache or built, and None; when the cache cannot keep it, the wheel is put in
    ``scratch`` (a folder the caller removes) and the second item says why."""
    return _build_wheel(None, None, scratch)


def check_wheel(path: Path) -> Path:
    """``path``, when it is a file named like an edgecls wheel; a ConfigError otherwise."""
    if not path.is_file():
        raise ConfigError(f"wheel not found: {path}")
    if not re.fullmatch(r"edgecls-[A-Za-z0-9_.+!]+-py3-none-any\.whl", path.name):
        raise ConfigError(f"--wheel {path.name}: expected an edgecls wheel (edgecls-VERSION-py3-none-any.whl)")
    return path


def download_wheelhouse(wheel: Path, extras: list[str], target: str, into: Path) -> list[Path]:
    """The aarch64 wheels of every dependency of ``wheel[extras]`` for ``target``'s Python and numpy (pip download)."""
    if target not in WHEELHOUSE_TARGETS:
        raise ConfigError(f"--wheelhouse {target!r}: expected one of {', '.join(WHEELHOUSE_TARGETS)}")
    spec = WHEELHOUSE_TARGETS[target]
    into.mkdir(parents=True, exist_ok=True)
    constraints = into / "constraints.txt"
    constraints.write_text(f"numpy=={spec['numpy']}\n")
    platforms = [arg for platform in AARCH64_PLATFORMS for arg in ("--platform", platform)]
    requirement = f"{wheel}[{','.join(extras)}]" if extras else str(wheel)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--only-binary=:all:",
        "--dest",
        str(into),
        "--python-version",
        spec["python"],
        *platforms,
        "--constraint",
        str(constraints),
        requirement,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    constraints.unlink()
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ConfigError(f"pip could not download the {target} aarch64 wheels ({' / '.join(tail)})")
    return sorted(p for p in into.glob("*.whl") if p.name != wheel.name)


# -- building, and the cache ----------------------------------------------------------------------------------------


def _build_wheel(root: Path | None, cache: Path | None, scratch: Path | None) -> tuple[Path, str | None]:
    """(the wheel, why the cache could not keep it, or None). With ``scratch``, a wheel the cache cannot keep is put
    there; without, that is a ConfigError."""
    root = root or source_root()
    if root is None:
        raise ConfigError(
            "this edgecls is an installed package, not a checkout, so it cannot build its own wheel: pass --wheel "
            f"edgecls-{__version__}-py3-none-any.whl (pip download --no-deps edgecls=={__version__}), or --pip-spec "
            "for an index you publish to"
        )
    files = _source_files(root)
    folder, found, problem = _cached(cache, _source_digest(root, files))
    if found is not None:
        return found, None
    with tempfile.TemporaryDirectory(prefix="edgecls-wheel-") as tmp:
        built = _pip_wheel(root, files, Path(tmp))
        if folder is not None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                return atomic_write_bytes(folder / built.name, built.read_bytes()), None
            except OSError as exc:
                problem = f"the wheel cache {folder} cannot be used ({os_reason(exc)})"
            except WriteError:
                problem = f"the wheel cache {folder} cannot be written"
        if scratch is None:
            raise ConfigError(f"{problem}; set XDG_CACHE_HOME to a writable folder")
        return Path(shutil.copy2(built, scratch / built.name)), problem


def _source_files(root: Path) -> list[Path]:
    files = [root / name for name in ("pyproject.toml", "README.md", "LICENSE") if (root / name).is_file()]
    for package in ("edgecls", "convert", "firmware_configs"):
        files += sorted(
            p
            for p in (root / package).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
        )
    return files


def _source_digest(root: Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _cached(cache: Path | None, digest: str) -> tuple[Path | None, Path | None, str | None]:
    """(the cache folder for ``digest``, the wheel found there, why there is no cache folder); None where not."""
    folder = None
    try:
        folder = (cache or wheel_cache()) / digest[:16]
        found = sorted(folder.glob("edgecls-*.whl")) if folder.is_dir() else []
    except ConfigError as exc:  # no home folder
        return None, None, str(exc)
    except OSError:
        found = []
    return folder, (found[0] if found else None), None


def _pip_wheel(root: Path, files: list[Path], tmp: Path) -> Path:
    """The wheel pip builds from a copy of ``files`` (under ``root``) in ``tmp``."""
    src, out = tmp / "src", tmp / "out"
    for path in files:
        target = src / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(src)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(out.glob("edgecls-*.whl"))
    if done.returncode != 0 or not wheels:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise ConfigError(f"could not build the edgecls wheel from {root} ({' / '.join(tail)}); pass --wheel")
    return wheels[0]
