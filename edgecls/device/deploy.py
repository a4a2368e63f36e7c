"""`edgecls deploy`: one archive with everything a device needs to classify at boot.

The bundle (``edgecls-<profile>/`` inside a .tar.gz) holds the model (and its Edge TPU build when one sits beside
it; for the AI Camera, the run's ``imx500/packerOut.zip``, from which ``install.sh`` makes the sensor's
``network.rpk`` with Raspberry Pi's ``imx500-package``), its labels, the device profile, the boot configuration lines and the tool that puts them in place, a systemd
unit that runs `edgecls run` at boot and restarts it on failure, an install script for the device, the edgecls wheel
(built from this checkout, or given), optionally the device's dependency wheels for an install with no internet,
a README and ``SHA256SUMS``. The archive is written atomically.

Everything that reaches the unit or the install script is validated here (no control characters; user names,
paths, profile names and sinks checked) and quoted for its context. An MQTT password never goes into the bundle:
the unit's sink URL keeps only the user, and ``install.sh`` writes the password (from a file or the environment)
into a root-only EnvironmentFile on the device.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecls import __version__
from edgecls.device.bootconfig import plan_edit
from edgecls.device.profiles import Profile
from edgecls.errors import ConfigError, WriteError
from edgecls.fsutil import atomic_write_bytes, os_reason
from edgecls.live.imx500 import FOLDER as IMX500_FOLDER
from edgecls.live.imx500 import LABELS as IMX500_LABELS
from edgecls.live.imx500 import PACKAGE as IMX500_PACKAGE
from edgecls.live.imx500 import RPK as IMX500_RPK
from edgecls.model.labels import format_labels, labels_for_file
from edgecls.model.metadata import check_model_file, compiled_sibling, cpu_sibling
from edgecls.sinks.base import check_sink_spec, has_control_chars
from edgecls.sinks.dashboard import is_loopback
from edgecls.sinks.hass import Discovery, require_mqtt_sink, run_args
from edgecls.sinks.mqtt import MQTT_PASSWORD_ENV, mask_url, split_mqtt_password

SERVICE_NAME = "edgecls.service"
# The AI Camera's packages, in Raspberry Pi's archive only: the sensor's firmware and imx500-package.
IMX500_PACKAGES = "imx500-all imx500-tools"
# The service's working directory (StateDirectory=edgecls); relative sink paths land here.
STATE_DIR = "/var/lib/edgecls"
ENV_FILE = "/etc/edgecls/edgecls.env"  # root-only (0600): the secrets the service reads
USER_PATTERN = r"[a-z_][a-z0-9_-]{0,31}"
PREFIX_PATTERN = r"(/[A-Za-z0-9_][A-Za-z0-9._+-]*)+"
# Folders an install prefix must not be: `install.sh --uninstall` removes the prefix.
SYSTEM_DIRS = {
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib64",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/usr/bin",
    "/usr/lib",
    "/usr/local",
    "/usr/local/bin",
    "/usr/local/lib",
    "/usr/sbin",
    "/usr/share",
    "/var",
    "/var/lib",
    "/var/log",
    "/var/tmp",
}

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


@dataclass(frozen=True)
class Bundle:
    path: Path
    root: str  # the folder inside the archive
    files: dict[str, int]  # name -> size in bytes
    warnings: tuple[str, ...] = field(default=())


# -- validation ----------------------------------------------------------------------------------------------------


def check_user(user: str) -> str:
    if not re.fullmatch(USER_PATTERN, user):
        raise ConfigError(
            f"--user {user!r} is not a valid system user name: lower-case letters, digits, '_' and '-', starting "
            "with a letter or '_', at most 32 characters"
        )
    if user == "root":
        raise ConfigError("--user root: the service runs as its own unprivileged user; name one (default edgecls)")
    return user


def check_prefix(prefix: str) -> str:
    shown = prefix.encode("unicode_escape").decode()
    if not prefix.startswith("/"):
        raise ConfigError(f"--prefix must be an absolute path on the device (received {shown!r})")
    if not re.fullmatch(PREFIX_PATTERN, prefix) or any(part in (".", "..") for part in prefix.split("/")):
        raise ConfigError(
            f"--prefix {shown!r}: use letters, digits and . _ + - in its folder names, no '..' and no trailing '/' "
            "(e.g. /opt/edgecls)"
        )
    if prefix in SYSTEM_DIRS:
        raise ConfigError(
            f"--prefix {prefix} is a system folder (install.sh --uninstall removes the prefix); "
            f"use a folder of its own, e.g. {prefix.rstrip('/')}/edgecls"
        )
    return prefix


def check_arg(what: str, value: str) -> str:
    if has_control_chars(value):
        raise ConfigError(f"{what} {mask_url(value).encode('unicode_escape').decode()!r} holds control characters")
    return value


# -- the edgecls wheel ---------------------------------------------------------------------------------------------


def source_root() -> Path | None:
    """The checkout this edgecls runs from (None when it is an installed package)."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    return root if pyproject.is_file() and 'name = "edgecls"' in pyproject.read_text(encoding="utf-8") else None


def _source_files(root: Path) -> list[Path]:
    files = [root / name for name in ("pyproject.toml", "README.md", "LICENSE") if (root / name).is_file()]
    for package in ("edgecls", "convert", "firmware_configs"):
        files += sorted(
            p
            for p in (root / package).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
        )
    return files


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


def _build_wheel(root: Path | None, cache: Path | None, scratch: Path | None) -> tuple[Path, str | None]:
    """(the wheel, why the cache could not keep it, or None). With ``scratch`` (a folder the caller removes), a
    wheel the cache cannot keep is put there; without, that is a ConfigError."""
    root = root or source_root()
    if root is None:
        raise ConfigError(
            "this edgecls is an installed package, not a checkout, so it cannot build its own wheel: pass --wheel "
            f"edgecls-{__version__}-py3-none-any.whl (pip download --no-deps edgecls=={__version__}), or --pip-spec "
            "for an index you publish to"
        )
    files = _source_files(root)
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    folder, problem = None, None
    try:
        folder = (cache or wheel_cache()) / digest.hexdigest()[:16]
        found = sorted(folder.glob("edgecls-*.whl")) if folder.is_dir() else []
    except ConfigError as exc:  # no home folder
        problem, found = str(exc), []
    except OSError:
        found = []
    if found:
        return found[0], None
    with tempfile.TemporaryDirectory(prefix="edgecls-wheel-") as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "out"
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
        if folder is not None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                return atomic_write_bytes(folder / wheels[0].name, wheels[0].read_bytes()), None
            except OSError as exc:
                problem = f"the wheel cache {folder} cannot be used ({os_reason(exc)})"
            except WriteError:
                problem = f"the wheel cache {folder} cannot be written"
        if scratch is None:
            raise ConfigError(f"{problem}; set XDG_CACHE_HOME to a writable folder")
        return Path(shutil.copy2(wheels[0], scratch / wheels[0].name)), problem


def _check_wheel(path: Path) -> Path:
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


# -- the bundle ----------------------------------------------------------------------------------------------------


def build_bundle(
    model: str | os.PathLike[str],
    profile: Profile,
    out: str | os.PathLike[str],
    *,
    sinks: list[str] | None = None,
    prefix: str = "/opt/edgecls",
    user: str = "edgecls",
    pip_spec: str | None = None,
    wheel: str | os.PathLike[str] | None = None,
    wheelhouse: str | None = None,
    extra_args: list[str] | None = None,
    discovery: Discovery | None = None,
) -> Bundle:
    """Write the deploy bundle for ``model`` on ``profile`` to ``out`` (a .tar.gz); returns what it holds.

    The device installs the edgecls ``wheel`` (built from this checkout when not given) unless ``pip_spec`` names
    what its pip should install instead. ``wheelhouse`` (bookworm or trixie) adds the aarch64 wheels of every
    dependency, so that the device needs no internet. ``discovery`` has the service announce the camera to Home
    Assistant (``--mqtt-discovery``, as ``extra_args`` may also say); ``install.sh --uninstall`` then takes its
    retained configs off the broker, with the sinks' retained status (`edgecls mqtt-clear`).

    For an AI Camera profile (camera source imx500) ``model`` is the run folder or its model.tflite, and the run's
    ``imx500/packerOut.zip`` and ``imx500/labels.txt`` go into the bundle."""
    check_prefix(prefix)
    check_user(user)
    sinks = [check_arg("--sink", s) for s in sinks or []]
    kinds = [check_sink_spec(sink) for sink in sinks]  # refused here, not at the device's boot
    extra = [check_arg("argument", a) for a in extra_args or []]
    if discovery is None and "--mqtt-discovery" in extra:
        discovery = Discovery()
    extra = [a for a in extra if a != "--mqtt-discovery"] + run_args(discovery)
    for sink, kind in zip(sinks, kinds):
        host = sink.partition(":")[2].rpartition(":")[0]
        if kind == "preview" and host and not is_loopback(host):
            raise ConfigError(
                f"--sink {sink}: a service's dashboard stays on 127.0.0.1 (it would need a token on the "
                "network); use preview:8080 and an SSH tunnel: ssh -L 8080:127.0.0.1:8080 pi@DEVICE"
            )
    if discovery is not None:
        require_mqtt_sink(sinks, discovery)
    if pip_spec is not None:
        check_arg("--pip-spec", pip_spec)
        if not pip_spec.strip() or pip_spec.startswith("-"):
            raise ConfigError(
                f"--pip-spec {pip_spec!r}: name a requirement (e.g. 'edgecls[camera]==1.2'), not an option"
            )
        if wheelhouse:
            raise ConfigError(
                "--wheelhouse bundles the dependencies of the bundled wheel; it does not go with --pip-spec"
            )
    out_path = Path(out)
    if not out_path.name.endswith((".tar.gz", ".tgz")):
        raise ConfigError(f"the bundle is a .tar.gz archive; name it so (received {out_path.name})")
    if wheelhouse is not None and wheelhouse not in WHEELHOUSE_TARGETS:
        raise ConfigError(f"--wheelhouse {wheelhouse!r}: expected one of {', '.join(WHEELHOUSE_TARGETS)}")
    imx500 = is_imx500_profile(profile)
    sensor_files = _imx500_files(Path(model), profile) if imx500 else {}
    if imx500 and Path(model).is_dir():
        model = Path(model) / "model.tflite"
    info = check_model_file(model)
    cpu_model, tpu_model = info.path, compiled_sibling(info.path)
    if info.has_edgetpu_op():  # given the Edge TPU build itself
        cpu_model, tpu_model = cpu_sibling(info.path) or info.path, info.path
    warnings = []
    files: dict[str, bytes] = {}
    edgetpu = profile.runtime.get("delegate") == "edgetpu"
    if cpu_model != tpu_model:
        files["model.tflite"] = Path(cpu_model).read_bytes()
    if tpu_model is not None:
        if edgetpu:
            files["model_edgetpu.tflite"] = Path(tpu_model).read_bytes()
        else:
            warnings.append(f"{tpu_model.name} left out: profile {profile.name} does not use the Edge TPU")
    elif edgetpu:
        warnings.append(
            f"no Edge TPU build beside {info.path.name} (expected {info.path.stem}_edgetpu.tflite); the device will "
            "run the CPU model through the delegate, which runs nothing on the Edge TPU: compile it first "
            "(edgecls convert --target edgetpu, or edgetpu_compiler)"
        )
    if "model.tflite" not in files:
        if not edgetpu:
            raise ConfigError(f"{info.path} only runs on the Edge TPU, and profile {profile.name} does not use one")
        warnings.append("no CPU model in the bundle: --allow-cpu-fallback will not be possible on the device")
    # the AI Camera's labels are those written with its package (imx500/labels.txt); the model's are not used there
    labels = None if imx500 else _labels(cpu_model if "model.tflite" in files else info.path)
    if labels:
        files["labels.txt"] = format_labels(labels).encode("utf-8")
    elif not imx500:
        warnings.append("the model carries no labels and none sit beside it: results will show class indices")
    files.update(sensor_files)

    # MQTT passwords stay out of the bundle: the unit names the user only, install.sh takes the password.
    public_sinks, mqtt_user = [], False
    for sink, kind in zip(sinks, kinds):
        if kind == "mqtt":
            public, password = split_mqtt_password(sink)
            if password is not None:
                warnings.append(
                    f"the MQTT password in {mask_url(sink)} is not put in the bundle; give it to install.sh on the "
                    f"device: sudo ./install.sh --mqtt-password-file FILE (or {MQTT_PASSWORD_ENV} in its environment)"
                )
            mqtt_user = mqtt_user or "@" in public.partition("://")[2].partition("/")[0]
            public_sinks.append(public)
        else:
            public_sinks.append(sink)

    extras = ["camera"] + (["mqtt"] if "mqtt" in kinds else [])
    wheel_name = ""
    if pip_spec is None:
        with tempfile.TemporaryDirectory(prefix="edgecls-wheel-") as scratch:
            if wheel is not None:
                wheel_path = _check_wheel(Path(wheel))
            else:
                wheel_path, problem = _build_wheel(None, None, Path(scratch))
                if problem is not None:
                    warnings.append(
                        f"{problem}: the wheel was built in a temporary folder, not kept for the next "
                        "bundle (set XDG_CACHE_HOME to a writable folder to keep it)"
                    )
            wheel_name = wheel_path.name
            files[f"wheels/{wheel_name}"] = wheel_path.read_bytes()
            if wheelhouse:
                with tempfile.TemporaryDirectory(prefix="edgecls-wheelhouse-") as tmp:
                    for dep in download_wheelhouse(wheel_path, extras, wheelhouse, Path(tmp)):
                        files[f"wheels/{dep.name}"] = dep.read_bytes()
    elif wheel is not None:
        raise ConfigError("--wheel and --pip-spec name two different things to install; give one")

    model_name = "model.tflite" if "model.tflite" in files else "model_edgetpu.tflite"
    files["profile.toml"] = profile.to_toml().encode("utf-8")
    files["config.txt.fragment"] = profile.boot_fragment().encode("utf-8")
    if profile.boot_lines:
        try:  # the lines must be ones the boot-configuration tool on the device accepts
            plan_edit("", [(e["line"], e["comment"]) for e in profile.boot_lines], profile=profile.name)
        except ValueError as exc:
            raise ConfigError(f"profile {profile.name}: boot.config: {exc}") from None
        files["edgecls_bootconfig.py"] = Path(__file__).with_name("bootconfig.py").read_bytes()
    args = _run_args(prefix, model_name, labels is not None, public_sinks, extra, imx500=imx500)
    clear = _clear_args(
        [public for public, kind in zip(public_sinks, kinds) if kind == "mqtt"],
        discovery,
        retained="--mqtt-retain" in extra,
    )
    files[SERVICE_NAME] = service_unit(profile, prefix=prefix, user=user, args=args).encode("utf-8")
    installed = sorted(n for n in files if not n.startswith("wheels/") and n != SERVICE_NAME)
    files["install.sh"] = install_script(
        profile,
        prefix=prefix,
        user=user,
        pip_spec=pip_spec or "",
        wheel=wheel_name,
        extras=extras,
        wheelhouse=WHEELHOUSE_TARGETS[wheelhouse]["python"] if wheelhouse else "",
        mqtt_user=mqtt_user,
        mqtt_clear=clear,
        files=[*installed, "README.txt", "bundle.json"],
    ).encode("utf-8")
    files["README.txt"] = _readme(
        profile, prefix, sorted(files) + ["README.txt", "bundle.json", "SHA256SUMS"], wheelhouse
    ).encode("utf-8")
    files["bundle.json"] = json.dumps(
        {
            "edgecls": __version__,
            "profile": profile.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "prefix": prefix,
            "user": user,
            "command": args,
            "install": pip_spec or f"wheels/{wheel_name}[{','.join(extras)}]",
            "wheelhouse": wheelhouse,
            "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
        },
        indent=2,
    ).encode("utf-8")
    files["SHA256SUMS"] = "".join(
        f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in sorted(files.items())
    ).encode("utf-8")

    root = f"edgecls-{profile.name}"
    now = int(time.time())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        folders = [f"{root}/{sub}" for sub in ("wheels", IMX500_FOLDER) if any(n.startswith(sub + "/") for n in files)]
        for folder in [root, *folders]:
            item = tarfile.TarInfo(folder)
            item.type, item.mode, item.mtime = tarfile.DIRTYPE, 0o755, now
            tar.addfile(item)
        for name, data in sorted(files.items()):
            item = tarfile.TarInfo(f"{root}/{name}")
            item.size, item.mtime = len(data), now
            item.mode = 0o755 if name.endswith(".sh") else 0o644
            tar.addfile(item, io.BytesIO(data))
    atomic_write_bytes(out_path, buf.getvalue())
    return Bundle(out_path, root, {name: len(data) for name, data in files.items()}, tuple(warnings))


def _labels(model: Path) -> list[str] | None:
    found = labels_for_file(check_model_file(model))
    return list(found.names) if found else None


def is_imx500_profile(profile: Profile) -> bool:
    """Whether the profile's camera is the AI Camera, which runs the network on its sensor."""
    return str(profile.camera["source"]).partition(":")[0] == "imx500"


def _imx500_files(model: Path, profile: Profile) -> dict[str, bytes]:
    """The run's IMX500 package and labels, under imx500/ in the bundle; a ConfigError naming the fix without them."""
    run = model if model.is_dir() else model.parent
    package, labels = run / IMX500_FOLDER / IMX500_PACKAGE, run / IMX500_FOLDER / IMX500_LABELS
    if not package.is_file():
        raise ConfigError(
            f"profile {profile.name} runs the network on the AI Camera's sensor, and {package} is missing: make it with "
            f"edgecls export imx500 {run} (or convert with --target imx500)"
        )
    if not labels.is_file():
        raise ConfigError(
            f"{labels} is missing: the IMX500 package of {run} needs the labels written with it "
            f"(edgecls export imx500 {run} writes both)"
        )
    from edgecls.model.labels import read_labels_file

    read_labels_file(labels)  # a LabelsError now, not on the device
    return {
        f"{IMX500_FOLDER}/{IMX500_PACKAGE}": package.read_bytes(),
        f"{IMX500_FOLDER}/{IMX500_LABELS}": labels.read_bytes(),
    }


def _run_args(
    prefix: str, model_name: str, labels: bool, sinks: list[str], extra: list[str], *, imx500: bool = False
) -> list[str]:
    args = [f"{prefix}/venv/bin/edgecls", "run", f"{prefix}/{model_name}", "--profile", f"{prefix}/profile.toml"]
    if imx500:  # the .rpk that install.sh made from the bundle's packerOut.zip, and the labels written with it
        args += [
            "--source",
            f"imx500:{prefix}/{IMX500_FOLDER}/{IMX500_RPK}",
            "--labels",
            f"{prefix}/{IMX500_FOLDER}/{IMX500_LABELS}",
        ]
    elif labels:
        args += ["--labels", f"{prefix}/labels.txt"]
    for sink in sinks:
        args += ["--sink", sink]
    # With sinks, results go there; without, decisions that change go to the journal. Statistics every minute.
    args += ["--quiet"] if sinks else ["--on-change"]
    args += ["--stats-every", "60", *extra]
    return args


def _clear_args(mqtt_sinks: list[str], discovery: Discovery | None, *, retained: bool) -> list[str]:
    """The `edgecls mqtt-clear` arguments that take the service's retained messages off its brokers (its status,
    Home Assistant's configs, a retained result); none without an MQTT sink."""
    if not mqtt_sinks:
        return []
    sinks = [arg for url in mqtt_sinks for arg in ("--sink", url)]
    return ["mqtt-clear", *sinks, *run_args(discovery), *(["--mqtt-retain"] if retained else []), "--timeout", "5"]


def systemd_quote(arg: str) -> str:
    """Quote one ExecStart argument for systemd (which expands % specifiers and $ variables)."""
    if has_control_chars(arg):
        raise ConfigError(f"{arg.encode('unicode_escape').decode()!r} holds control characters")
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"' if any(c in arg for c in " \t\"'\\;") or escaped != arg else arg


def service_unit(profile: Profile, *, prefix: str, user: str, args: list[str]) -> str:
    check_prefix(prefix)
    check_user(user)
    edgetpu = profile.runtime.get("delegate") == "edgetpu"
    after = "network-online.target" + (" systemd-udev-settle.service" if edgetpu else "")
    # Description is a plain value: % starts a specifier, a trailing backslash would continue the line.
    description = check_arg("description", f"{profile.name}: {profile.description}")
    description = description.replace("\\", "/").replace("%", "%%")
    return f"""[Unit]
Description=edgecls live classification ({description})
Documentation=file:{prefix}/README.txt
After={after}
Wants=network-online.target

[Service]
Type=simple
User={user}
# The working directory is the service's own, writable by it; relative sink paths land here.
StateDirectory={STATE_DIR.rsplit("/", 1)[1]}
WorkingDirectory={STATE_DIR}
Environment=PYTHONUNBUFFERED=1
# Secrets (the MQTT password) from a root-only file that install.sh writes; the unit holds none.
EnvironmentFile=-{ENV_FILE}
ExecStart={" ".join(systemd_quote(a) for a in args)}
# edgecls run stops cleanly on SIGTERM, with every sink flushed.
KillSignal=SIGTERM
TimeoutStopSec=20
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
"""


def install_script(
    profile: Profile,
    *,
    prefix: str,
    user: str,
    pip_spec: str,
    wheel: str,
    extras: list[str],
    wheelhouse: str,
    mqtt_user: bool,
    files: list[str],
    mqtt_clear: list[str] | None = None,
) -> str:
    """The bundle's install.sh (see the text of `_INSTALL_SH`); every value in it is validated and shell-quoted."""
    check_prefix(prefix)
    check_user(user)
    check_arg("--pip-spec", pip_spec)
    imx500 = is_imx500_profile(profile)
    picam = profile.camera["source"].startswith("picam") or imx500
    edgetpu = profile.runtime.get("delegate") == "edgetpu"
    pci = edgetpu and str(profile.runtime.get("device", "")).startswith("pci")
    boot = profile.data.get("boot", {})
    boot_args = [arg for entry in profile.boot_lines for arg in ("--line", entry["line"], entry["comment"])]
    q = shlex.quote
    values = {
        "PROFILE": profile.name,
        "PREFIX": prefix,
        "SERVICE_USER": user,
        "STATE_DIR": STATE_DIR,
        "ENV_FILE": ENV_FILE,
        "SERVICE": SERVICE_NAME,
        "PIP_SPEC": pip_spec,
        "WHEEL": wheel,
        "EXTRAS": ",".join(extras),
        "WHEELHOUSE_PYTHON": wheelhouse,
        "BOOT_FILE": str(boot.get("file", "")) if profile.boot_lines else "",
        "PICAM": "1" if picam else "0",
        "EDGETPU": "1" if edgetpu else "0",
        "EDGETPU_PACKAGES": "libedgetpu1-std" + (" gasket-dkms" if pci else ""),
        "IMX500": "1" if imx500 else "0",
        "IMX500_PACKAGES": IMX500_PACKAGES,
        "SERVICE_GROUPS": "video plugdev" + (" apex" if pci else ""),
        "MQTT_USER": "1" if mqtt_user else "0",
        "PASSWORD_ENV": MQTT_PASSWORD_ENV,
    }
    for name, value in values.items():
        check_arg(name, value)
    assignments = "\n".join(f"{name}={q(value)}" for name, value in values.items())
    assignments += "\nINSTALL_FILES=(" + " ".join(q(f) for f in files) + ")"
    assignments += "\nBOOT_ARGS=(" + " ".join(q(a) for a in boot_args) + ")"
    assignments += "\nMQTT_CLEAR=(" + " ".join(q(check_arg("mqtt-clear argument", a)) for a in mqtt_clear or []) + ")"
    header = f"# Install this edgecls bundle (profile {profile.name}) on the device."
    return _INSTALL_SH.replace("@HEADER@", header).replace("@VALUES@", assignments)


# The install script. Values come first, as shell-quoted assignments; nothing below them is generated.
_INSTALL_SH = r"""#!/usr/bin/env bash
@HEADER@
#   sudo ./install.sh [--dry-run] [--no-boot-config] [--no-start] [--pip-spec SPEC] [--mqtt-password-file FILE]
#   sudo ./install.sh --uninstall [--dry-run]     (also clears the service's retained MQTT messages)
# It checks the system first (64-bit ARM or x86-64, Python >= 3.10 with venv), then installs edgecls in a venv that
# sees the system's packages (picamera2), the model and profile beside it, the boot configuration lines (only those
# not already there), and the systemd service, which it starts unless a reboot is needed first. For the AI Camera it
# installs imx500-all and imx500-tools and makes the sensor's network.rpk from packerOut.zip with imx500-package.
# --pip-spec SPEC (or EDGECLS_PIP_SPEC) installs SPEC from your own index instead of the bundled wheel.
# --mqtt-password-file FILE (or EDGECLS_MQTT_PASSWORD) stores the MQTT password in a root-only (0600) file.
set -euo pipefail
umask 022

@VALUES@

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DRY_RUN=0
BOOT_CONFIG=1
START=1
UNINSTALL=0
DRY_FLAG=()
PASSWORD_FILE=""
if [ -n "${EDGECLS_PIP_SPEC:-}" ]; then PIP_SPEC="$EDGECLS_PIP_SPEC"; fi
while [ "$#" -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1; DRY_FLAG=(--dry-run) ;;
    --no-boot-config) BOOT_CONFIG=0 ;;
    --no-start) START=0 ;;
    --uninstall) UNINSTALL=1 ;;
    --pip-spec) [ "$#" -ge 2 ] || { echo "install.sh: --pip-spec needs a value" >&2; exit 2; }; PIP_SPEC="$2"; shift ;;
    --mqtt-password-file)
      [ "$#" -ge 2 ] || { echo "install.sh: --mqtt-password-file needs a file" >&2; exit 2; }
      PASSWORD_FILE="$2"; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

say() { echo "install.sh: $*"; }
fail() { echo "install.sh: $*" >&2; exit 1; }
run() {
  # Print each step; with --dry-run, only print it.
  echo "+ $*"
  if [ "$DRY_RUN" = 0 ]; then "$@"; fi
}
systemd_running() { [ -d /run/systemd/system ]; }
finish() {
  # The last line: what was done; with --dry-run, that nothing was.
  if [ "$DRY_RUN" = 1 ]; then
    say "dry run: nothing was changed (the + lines are the steps it would take)"
  else
    say "$*"
  fi
}
clear_mqtt() {
  # The service's retained MQTT messages (its status, Home Assistant's discovery configs) off the broker, with the
  # installed edgecls and the stored password. A broker that cannot be reached is a warning: the uninstall goes on.
  local edgecls="$PREFIX/venv/bin/edgecls"
  echo "+ $edgecls ${MQTT_CLEAR[*]}"
  [ "$DRY_RUN" = 0 ] || return 0
  if [ -x "$edgecls" ] \
    && (if [ -r "$ENV_FILE" ]; then set -a; . "$ENV_FILE"; set +a; fi; exec "$edgecls" "${MQTT_CLEAR[@]}"); then
    return 0
  fi
  echo "install.sh: warning: the service's retained MQTT messages (its status, Home Assistant's discovery configs)" \
    "are still on the broker; the uninstall goes on. Clear them later from any machine with edgecls:" \
    "edgecls$(printf ' %q' "${MQTT_CLEAR[@]}")" >&2
}

case "$PREFIX" in
  ""|/|/bin|/boot|/etc|/home|/lib|/opt|/root|/usr|/usr/local|/var|/var/lib) fail "refusing the prefix '$PREFIX'" ;;
esac

if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
  fail "run it as root: sudo $0"
fi

# ---- uninstall ----------------------------------------------------------------------------------------------------
if [ "$UNINSTALL" = 1 ]; then
  if command -v systemctl >/dev/null 2>&1 && [ -e "/etc/systemd/system/$SERVICE" ]; then
    if systemd_running; then run systemctl disable --now "$SERVICE"; else run systemctl disable "$SERVICE"; fi
  fi
  run rm -f "/etc/systemd/system/$SERVICE" "/etc/systemd/system/multi-user.target.wants/$SERVICE"
  if systemd_running; then run systemctl daemon-reload; fi
  if [ "${#MQTT_CLEAR[@]}" -gt 0 ]; then clear_mqtt; fi
  if [ -n "$BOOT_FILE" ] && [ -f "$BOOT_FILE" ] && [ -f "$HERE/edgecls_bootconfig.py" ]; then
    rc=0
    python3 "$HERE/edgecls_bootconfig.py" remove "$BOOT_FILE" "${DRY_FLAG[@]}" || rc=$?
    case "$rc" in 0|10|11) ;; *) fail "could not take the edgecls lines out of $BOOT_FILE" ;; esac
  fi
  run rm -f "$ENV_FILE"
  [ ! -d "$(dirname "$ENV_FILE")" ] || run rmdir --ignore-fail-on-non-empty "$(dirname "$ENV_FILE")"
  run rm -rf "$PREFIX"
  if id "$SERVICE_USER" >/dev/null 2>&1 && [ "$(id -u "$SERVICE_USER")" -lt 1000 ]; then
    run userdel "$SERVICE_USER"
  fi
  finish "uninstalled; $STATE_DIR (the service's results) is left in place: remove it yourself if you do not need it"
  exit 0
fi

# ---- checks, before anything changes ------------------------------------------------------------------------------
case "$(uname -m)" in
  aarch64|arm64|x86_64) ;;
  armv6l|armv7l|armhf|arm*)
    fail "this is a 32-bit ARM system ($(uname -m)); the LiteRT interpreter has wheels for 64-bit ARM (aarch64) \
only: install Raspberry Pi OS (64-bit) and run this again" ;;
  *) fail "$(uname -m) is not supported: edgecls runs on 64-bit ARM (aarch64) and x86-64" ;;
esac
command -v python3 >/dev/null 2>&1 || fail "python3 is missing: sudo apt-get install python3 python3-venv"
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || fail "edgecls needs Python >= 3.10; this system has $(python3 -V 2>&1)"
python3 -c 'import venv, ensurepip' 2>/dev/null \
  || fail "Python's venv is missing: sudo apt-get install python3-venv (then run this again)"
PY_VERSION="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ -n "$WHEELHOUSE_PYTHON" ] && [ "$PY_VERSION" != "$WHEELHOUSE_PYTHON" ]; then
  fail "this bundle's wheels are for Python $WHEELHOUSE_PYTHON and this system has $PY_VERSION: make the bundle \
with the --wheelhouse that matches this system"
fi
if command -v sha256sum >/dev/null 2>&1 && [ -f "$HERE/SHA256SUMS" ]; then
  (cd "$HERE" && sha256sum --check --quiet --strict SHA256SUMS) \
    || fail "files in $HERE do not match SHA256SUMS: the bundle is damaged; copy it again"
fi
if [ -z "$PIP_SPEC" ] && [ ! -f "$HERE/wheels/$WHEEL" ]; then
  fail "wheels/$WHEEL is missing from the bundle; copy it again"
fi
case "$PIP_SPEC" in -*) fail "--pip-spec takes a requirement, not an option: $PIP_SPEC" ;; esac
PASSWORD=""
if [ -n "$PASSWORD_FILE" ]; then
  [ -r "$PASSWORD_FILE" ] || fail "cannot read the MQTT password file $PASSWORD_FILE"
  IFS= read -r PASSWORD < "$PASSWORD_FILE" || true
  PASSWORD="${PASSWORD%$'\r'}"
  [ -n "$PASSWORD" ] || fail "the MQTT password file $PASSWORD_FILE is empty"
elif [ -n "${EDGECLS_MQTT_PASSWORD:-}" ]; then
  PASSWORD="$EDGECLS_MQTT_PASSWORD"
fi
case "$PASSWORD" in *[[:cntrl:]]*) fail "the MQTT password holds control characters" ;; esac
if [ "$IMX500" = 1 ]; then
  case "$(uname -m)" in
    aarch64|arm64) ;;
    *) fail "profile $PROFILE is for the Raspberry Pi AI Camera, whose packages ($IMX500_PACKAGES, from Raspberry Pi's \
archive) exist for Raspberry Pi OS on a Raspberry Pi only; this is $(uname -m)" ;;
  esac
fi
if [ "$EDGETPU" = 1 ] && ! ldconfig -p 2>/dev/null | grep -q "libedgetpu.so.1"; then
  echo "install.sh: libedgetpu.so.1 is not installed. Add the Coral apt repository" \
    "(https://coral.ai/software/#debian-packages), then: sudo apt-get install $EDGETPU_PACKAGES" >&2
  [ "$DRY_RUN" = 1 ] || exit 1
fi

# ---- system packages ----------------------------------------------------------------------------------------------
APT_UPDATED=0
if [ "$PICAM" = 1 ] && ! python3 -c "import picamera2" 2>/dev/null; then
  case "$(uname -m)" in
    aarch64|arm64)
      # picamera2 comes from the Raspberry Pi OS archive, not from pip; the venv sees it through system site packages.
      if ! grep -rqs "raspberrypi" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "install.sh: warning: python3-picamera2 is in the Raspberry Pi OS archive (archive.raspberrypi.com)," \
          "which this system's apt sources do not name" >&2
      fi
      run apt-get update
      APT_UPDATED=1
      run apt-get install -y python3-picamera2 ;;
    *)
      # Raspberry Pi OS ships picamera2 for its boards (64-bit ARM) only: there is no such package to install here.
      echo "install.sh: warning: profile $PROFILE uses the Raspberry Pi camera (picamera2), which exists on a" \
        "Raspberry Pi only; this is $(uname -m), so python3-picamera2 is not installed and the service will not" \
        "find that camera here (a USB camera: the profile linux-usb-camera)" >&2 ;;
  esac
fi

# The AI Camera: the sensor's firmware (imx500-all) and imx500-package (imx500-tools), from Raspberry Pi's archive.
# The firmware is loaded when the camera is probed at boot: newly installed, it needs a reboot.
IMX500_FIRMWARE_NEW=0
if [ "$IMX500" = 1 ]; then
  MISSING=()
  for pkg in $IMX500_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || MISSING+=("$pkg")
  done
  if [ "${#MISSING[@]}" -gt 0 ]; then
    [ "$APT_UPDATED" = 1 ] || run apt-get update
    run apt-get install -y "${MISSING[@]}" || fail "${MISSING[*]} could not be installed: they come from Raspberry \
Pi's archive (archive.raspberrypi.com), which Raspberry Pi OS has in its apt sources"
    case " ${MISSING[*]} " in *" imx500-all "*) IMX500_FIRMWARE_NEW=1 ;; esac
  fi
fi

# numpy: the venv uses the system's numpy when there is one, so that system modules built against it (picamera2's
# simplejpeg and pidng on Raspberry Pi OS) keep working; pip then picks OpenCV and LiteRT builds that accept it.
CONSTRAINT=""
SYSTEM_NUMPY="$(python3 -c 'import numpy; print(numpy.__version__)' 2>/dev/null || true)"
if [ -n "$SYSTEM_NUMPY" ]; then
  CONSTRAINT="numpy==$SYSTEM_NUMPY"
  say "numpy: keeping the system's numpy $SYSTEM_NUMPY in the venv (constraint $CONSTRAINT), so system modules" \
    "built against it keep working"
else
  say "numpy: none in the system; pip installs its own into the venv"
fi

# ---- the service user, the venv, the files ------------------------------------------------------------------------
if ! id "$SERVICE_USER" >/dev/null 2>&1; then
  run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
fi
for group in $SERVICE_GROUPS; do
  getent group "$group" >/dev/null || run groupadd --system "$group"
  run usermod -aG "$group" "$SERVICE_USER"
done

run install -d -m 755 "$PREFIX"
run python3 -m venv --system-site-packages "$PREFIX/venv"
PIP=("$PREFIX/venv/bin/pip" install --upgrade --disable-pip-version-check)
if [ -n "$CONSTRAINT" ]; then
  [ "$DRY_RUN" = 1 ] || echo "$CONSTRAINT" > "$PREFIX/constraints.txt"
  PIP+=(--constraint "$PREFIX/constraints.txt")
fi
if [ -n "$WHEELHOUSE_PYTHON" ]; then
  PIP+=(--no-index --find-links "$HERE/wheels")  # everything comes from the bundle: no internet needed
elif [ -z "$PIP_SPEC" ]; then
  PIP+=(--find-links "$HERE/wheels")
fi
if [ -n "$PIP_SPEC" ]; then
  run "${PIP[@]}" "$PIP_SPEC"
else
  run "${PIP[@]}" "$HERE/wheels/$WHEEL[$EXTRAS]"
  # the same version number may hold new code: put this bundle's edgecls in place whatever pip thinks
  run "$PREFIX/venv/bin/pip" install --disable-pip-version-check --force-reinstall --no-deps --no-index \
    "$HERE/wheels/$WHEEL"
fi
if [ "$IMX500" = 1 ]; then run install -d -m 755 "$PREFIX/imx500"; fi
for f in "${INSTALL_FILES[@]}"; do
  run install -m 644 "$HERE/$f" "$PREFIX/$f"
done

# ---- the AI Camera's network: imx500-package makes network.rpk from packerOut.zip, here on the device ------------
# Again only when the bundle brings another packerOut.zip (its checksum is kept beside the .rpk); the new .rpk is
# made in a folder of its own and renamed into place, so a failure leaves the old one as it was.
if [ "$IMX500" = 1 ]; then
  RPK="$PREFIX/imx500/network.rpk"
  PACKAGE_SUM="$(sha256sum "$HERE/imx500/packerOut.zip" | cut -d' ' -f1)"
  if [ -f "$RPK" ] && [ "$(cat "$RPK.sha256" 2>/dev/null || true)" = "$PACKAGE_SUM" ]; then
    say "the AI Camera's network $RPK is up to date (made from this packerOut.zip)"
  else
    if [ "$DRY_RUN" = 0 ]; then
      command -v imx500-package >/dev/null 2>&1 \
        || fail "imx500-package is missing although imx500-tools was installed: sudo apt-get install --reinstall imx500-tools"
      WORK="$(mktemp -d "$PREFIX/imx500/.package.XXXXXX")"
    else
      WORK="$PREFIX/imx500/.package.XXXXXX"
    fi
    run imx500-package -i "$PREFIX/imx500/packerOut.zip" -o "$WORK" \
      || { rm -rf "$WORK"; fail "imx500-package could not make the network from $PREFIX/imx500/packerOut.zip (its \
output is above)"; }
    if [ "$DRY_RUN" = 0 ] && [ ! -s "$WORK/network.rpk" ]; then
      rm -rf "$WORK"
      fail "imx500-package made no network.rpk from $PREFIX/imx500/packerOut.zip (its output is above)"
    fi
    run install -m 644 "$WORK/network.rpk" "$RPK.new"
    run mv -f "$RPK.new" "$RPK"
    echo "+ write $RPK.sha256 (the checksum of the packerOut.zip it was made from)"
    [ "$DRY_RUN" = 1 ] || echo "$PACKAGE_SUM" > "$RPK.sha256"
    run rm -rf "$WORK"
  fi
fi
if [ "$HERE" != "$PREFIX" ]; then run install -m 755 "$HERE/install.sh" "$PREFIX/install.sh"; fi
run install -d -m 750 -o "$SERVICE_USER" -g "$(id -gn "$SERVICE_USER" 2>/dev/null || echo "$SERVICE_USER")" "$STATE_DIR"

if [ -n "$PASSWORD" ]; then
  echo "+ write $ENV_FILE (root only, mode 0600) with $PASSWORD_ENV"
  if [ "$DRY_RUN" = 0 ]; then
    install -d -m 700 "$(dirname "$ENV_FILE")"
    escaped="${PASSWORD//\\/\\\\}"; escaped="${escaped//\"/\\\"}"; escaped="${escaped//\$/\\\$}"
    escaped="${escaped//\`/\\\`}"
    tmp="$(umask 077 && mktemp "$(dirname "$ENV_FILE")/.edgecls.env.XXXXXX")"
    printf '%s="%s"\n' "$PASSWORD_ENV" "$escaped" > "$tmp"
    chmod 600 "$tmp"
    mv -f "$tmp" "$ENV_FILE"
  fi
elif [ "$MQTT_USER" = 1 ] && [ ! -f "$ENV_FILE" ]; then
  echo "install.sh: warning: the service's MQTT sink names a user but no password was given: run this again" \
    "with --mqtt-password-file FILE if the broker wants one" >&2
fi

# ---- boot configuration -------------------------------------------------------------------------------------------
NEED_REBOOT=0
REBOOT_WHY=""
reboot_to() { NEED_REBOOT=1; REBOOT_WHY="${REBOOT_WHY:+$REBOOT_WHY and to }$1"; }
if [ "$BOOT_CONFIG" = 1 ] && [ -n "$BOOT_FILE" ]; then
  if [ ! -f "$BOOT_FILE" ]; then
    echo "install.sh: $BOOT_FILE not found; add the lines in config.txt.fragment to the boot configuration" \
      "yourself" >&2
  else
    rc=0
    python3 "$HERE/edgecls_bootconfig.py" apply "$BOOT_FILE" --profile "$PROFILE" "${BOOT_ARGS[@]}" \
      "${DRY_FLAG[@]}" || rc=$?
    case "$rc" in
      0|11) ;;
      10) reboot_to "apply the boot configuration ($BOOT_FILE.edgecls-backup holds the old one)" ;;
      *) fail "could not update $BOOT_FILE (nothing else is changed by this step)" ;;
    esac
  fi
fi

if [ "$IMX500_FIRMWARE_NEW" = 1 ]; then reboot_to "load the AI Camera's firmware (imx500-all was just installed)"; fi

# ---- the service --------------------------------------------------------------------------------------------------
run install -m 644 "$HERE/$SERVICE" "/etc/systemd/system/$SERVICE"
if systemd_running; then
  run systemctl daemon-reload
  run systemctl enable "$SERVICE"
  if [ "$NEED_REBOOT" = 1 ]; then
    finish "installed and enabled; reboot to $REBOOT_WHY: the service starts then"
  elif [ "$START" = 1 ]; then
    run systemctl restart "$SERVICE"
    finish "installed and started; follow it with: journalctl -u $SERVICE -f"
  else
    finish "installed and enabled, not started (--no-start): sudo systemctl start $SERVICE"
  fi
else
  # An image build (pi-gen, sdm) or a chroot: no running systemd to talk to.
  if command -v systemctl >/dev/null 2>&1; then
    run systemctl enable "$SERVICE"
  else
    run install -d -m 755 /etc/systemd/system/multi-user.target.wants
    run ln -sf "/etc/systemd/system/$SERVICE" "/etc/systemd/system/multi-user.target.wants/$SERVICE"
  fi
  finish "installed and enabled; systemd is not running here (a chroot or an image build), so $SERVICE was not" \
    "started: it starts at the device's next boot"
fi
"""


def _readme(profile: Profile, prefix: str, files: list[str], wheelhouse: str | None) -> str:
    offline = (
        (
            f"The wheels/ folder holds every dependency for {WHEELHOUSE_TARGETS[wheelhouse]['os']}: "
            "the install needs no internet."
        )
        if wheelhouse
        else "pip fetches the dependencies from PyPI."
    )
    lines = [
        f"edgecls deploy bundle for {profile.name}: {profile.description}",
        "",
        "On the device (64-bit Raspberry Pi OS or Debian, Python >= 3.10):",
        f"  tar xzf BUNDLE.tar.gz && cd edgecls-{profile.name} && sudo ./install.sh",
        "  (--dry-run shows every step without doing it; --uninstall takes it all out again)",
        "",
        f"It installs edgecls from wheels/ in {prefix}/venv ({offline.rstrip('.')}), the model, labels and profile",
        f"in {prefix}, the boot configuration lines of config.txt.fragment that are not already in effect, and",
        f"enables and starts {SERVICE_NAME} (logs: journalctl -u {SERVICE_NAME} -f). The service runs as its own",
        f"user in {STATE_DIR}; an MQTT password goes into {ENV_FILE} (root only) with --mqtt-password-file.",
        *(
            [
                f"For the AI Camera it installs {IMX500_PACKAGES} from Raspberry Pi's archive (a first install of the",
                "firmware needs a reboot) and makes imx500/network.rpk from imx500/packerOut.zip with imx500-package,",
                "again only when the package changes.",
            ]
            if is_imx500_profile(profile)
            else []
        ),
        "",
        "Files:",
        *[f"  {name}" for name in files],
    ]
    return "\n".join(lines) + "\n"


def bundle_contents(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The names in a bundle archive and its bundle.json (for `edgecls deploy` output and tests)."""
    with tarfile.open(path, "r:gz") as tar:
        names = tar.getnames()
        meta = next((m for m in tar.getmembers() if m.name.endswith("/bundle.json")), None)
        data = json.loads(tar.extractfile(meta).read()) if meta else {}  # type: ignore[union-attr]
    return {"names": names, "bundle": data}
