"""`edgecls deploy`: one archive with everything a device needs to classify at boot.

The bundle (``edgecls-<profile>/`` inside a .tar.gz) holds the model (and its Edge TPU build when one sits beside
it; for the AI Camera, the run's ``imx500/packerOut.zip``, from which ``install.sh`` makes the sensor's
``network.rpk`` with Raspberry Pi's ``imx500-package``), its labels, the device profile, the boot configuration
lines and the tool that puts them in place, a systemd unit that runs `edgecls run` at boot and restarts it on
failure, an install script for the device, the edgecls wheel (built from this checkout, or given), optionally the
device's dependency wheels for an install with no internet, a README and ``SHA256SUMS``. The archive is written
atomically.

`build_bundle` reads as the process: check what was asked (`_plan`), collect the model's files, the wheels and the
profile's, render the unit and install.sh (edgecls/device/installer.py, from the templates in scripts/), add the
README and the checksums, write the archive. Everything that reaches the unit or the install script is validated
(no control characters; user names, paths, profile names and sinks checked) and quoted for its context. An MQTT
password never goes into the bundle: the unit's sink URL keeps only the user, and ``install.sh`` writes the
password (from a file or the environment) into a root-only EnvironmentFile on the device.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecls import __version__
from edgecls.device import installer
from edgecls.device.bootconfig import plan_edit
from edgecls.device.installer import (
    IMX500_PACKAGES,
    SERVICE_NAME,
    check_arg,
    check_prefix,
    check_user,
    install_script,
    is_imx500_profile,
    service_unit,
)
from edgecls.device.profiles import Profile
from edgecls.device.wheels import WHEELHOUSE_TARGETS, build_wheel_in, check_wheel, download_wheelhouse
from edgecls.errors import ConfigError
from edgecls.fsutil import atomic_write_bytes
from edgecls.live.imx500 import FOLDER as IMX500_FOLDER
from edgecls.live.imx500 import LABELS as IMX500_LABELS
from edgecls.live.imx500 import PACKAGE as IMX500_PACKAGE
from edgecls.live.imx500 import RPK as IMX500_RPK
from edgecls.model.labels import format_labels, labels_for_file
from edgecls.model.metadata import check_model_file, compiled_sibling, cpu_sibling
from edgecls.sinks.dashboard import is_loopback
from edgecls.sinks.hass import Discovery, require_mqtt_sink, run_args
from edgecls.sinks.mqtt import MQTT_PASSWORD_ENV, mask_url, split_mqtt_password
from edgecls.sinks.spec import check_sink_spec


@dataclass(frozen=True)
class Bundle:
    path: Path
    root: str  # the folder inside the archive
    files: dict[str, int]  # name -> size in bytes
    warnings: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class _Plan:
    """What `build_bundle` was asked for, checked: nothing here can break the unit or install.sh."""

    out: Path
    prefix: str
    user: str
    sinks: tuple[str, ...]
    kinds: tuple[str, ...]  # each sink's kind (mqtt, jsonl, preview, ...)
    extra: tuple[str, ...]  # more `edgecls run` arguments, Home Assistant discovery's among them
    discovery: Discovery | None
    pip_spec: str | None
    wheel: Path | None
    wheelhouse: str | None

    @property
    def extras(self) -> list[str]:
        """The edgecls extras the device installs."""
        return ["camera"] + (["mqtt"] if "mqtt" in self.kinds else [])


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
    plan = _plan(
        profile,
        out,
        sinks=sinks or [],
        prefix=prefix,
        user=user,
        pip_spec=pip_spec,
        wheel=wheel,
        wheelhouse=wheelhouse,
        extra_args=extra_args or [],
        discovery=discovery,
    )
    files, warnings = _model_files(Path(model), profile)
    public_sinks, mqtt_user, password_warnings = _public_sinks(plan)
    wheel_files, wheel_name, wheel_warnings = _wheel_files(plan)
    files.update(wheel_files)
    files.update(_profile_files(profile))
    args = _run_args(
        plan.prefix,
        "model.tflite" if "model.tflite" in files else "model_edgetpu.tflite",
        "labels.txt" in files,
        public_sinks,
        list(plan.extra),
        imx500=is_imx500_profile(profile),
    )
    files.update(_device_scripts(plan, profile, files, args, public_sinks, mqtt_user=mqtt_user, wheel=wheel_name))
    files.update(_readme_and_sums(plan, profile, files, args, wheel=wheel_name))
    root = f"edgecls-{profile.name}"
    _write_archive(plan.out, root, files)
    every_warning = (*warnings, *password_warnings, *wheel_warnings)
    return Bundle(plan.out, root, {name: len(data) for name, data in files.items()}, every_warning)


# -- the steps -----------------------------------------------------------------------------------------------------


def _plan(
    profile: Profile,
    out: str | os.PathLike[str],
    *,
    sinks: list[str],
    prefix: str,
    user: str,
    pip_spec: str | None,
    wheel: str | os.PathLike[str] | None,
    wheelhouse: str | None,
    extra_args: list[str],
    discovery: Discovery | None,
) -> _Plan:
    """Check everything asked of `build_bundle` before any file is read: a ConfigError names the bad value."""
    check_prefix(prefix)
    check_user(user)
    sinks = [check_arg("--sink", s) for s in sinks]
    kinds = [check_sink_spec(sink) for sink in sinks]  # refused here, not at the device's boot
    extra = [check_arg("argument", a) for a in extra_args]
    if discovery is None and "--mqtt-discovery" in extra:
        discovery = Discovery()
    extra = [a for a in extra if a != "--mqtt-discovery"] + run_args(discovery)
    _check_dashboards(sinks, kinds)
    if discovery is not None:
        require_mqtt_sink(sinks, discovery)
    _check_install_source(pip_spec, wheel, wheelhouse)
    out_path = Path(out)
    if not out_path.name.endswith((".tar.gz", ".tgz")):
        raise ConfigError(f"the bundle is a .tar.gz archive; name it so (received {out_path.name})")
    if wheelhouse is not None and wheelhouse not in WHEELHOUSE_TARGETS:
        raise ConfigError(f"--wheelhouse {wheelhouse!r}: expected one of {', '.join(WHEELHOUSE_TARGETS)}")
    if profile.boot_lines:
        try:  # the lines must be ones the boot-configuration tool on the device accepts
            plan_edit("", [(e["line"], e["comment"]) for e in profile.boot_lines], profile=profile.name)
        except ValueError as exc:
            raise ConfigError(f"profile {profile.name}: boot.config: {exc}") from None
    return _Plan(
        out=out_path,
        prefix=prefix,
        user=user,
        sinks=tuple(sinks),
        kinds=tuple(kinds),
        extra=tuple(extra),
        discovery=discovery,
        pip_spec=pip_spec,
        wheel=check_wheel(Path(wheel)) if wheel is not None else None,
        wheelhouse=wheelhouse,
    )


def _check_dashboards(sinks: list[str], kinds: list[str]) -> None:
    for sink, kind in zip(sinks, kinds):
        host = sink.partition(":")[2].rpartition(":")[0]
        if kind == "preview" and host and not is_loopback(host):
            raise ConfigError(
                f"--sink {sink}: a service's dashboard stays on 127.0.0.1 (it would need a token on the "
                "network); use preview:8080 and an SSH tunnel: ssh -L 8080:127.0.0.1:8080 pi@DEVICE"
            )


def _check_install_source(pip_spec: str | None, wheel: str | os.PathLike[str] | None, wheelhouse: str | None) -> None:
    """What the device's pip installs: the bundled wheel, or ``pip_spec`` (a requirement, never an option)."""
    if pip_spec is None:
        return
    check_arg("--pip-spec", pip_spec)
    if not pip_spec.strip() or pip_spec.startswith("-"):
        raise ConfigError(f"--pip-spec {pip_spec!r}: name a requirement (e.g. 'edgecls[camera]==1.2'), not an option")
    if wheelhouse:
        raise ConfigError("--wheelhouse bundles the dependencies of the bundled wheel; it does not go with --pip-spec")
    if wheel is not None:
        raise ConfigError("--wheel and --pip-spec name two different things to install; give one")


def _model_files(model: Path, profile: Profile) -> tuple[dict[str, bytes], list[str]]:
    """The model (its CPU build and, for an Edge TPU profile, its Edge TPU build), its labels and, for the AI
    Camera, the run's sensor package; and the warnings about what is missing or left out."""
    imx500 = is_imx500_profile(profile)
    sensor_files = _imx500_files(model, profile) if imx500 else {}
    if imx500 and model.is_dir():
        model = model / "model.tflite"
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
    return files, warnings


def _public_sinks(plan: _Plan) -> tuple[list[str], bool, list[str]]:
    """The sinks as the unit shows them (MQTT passwords stay out of the bundle: the unit names the user only,
    install.sh takes the password), whether an MQTT sink names a user, and a warning for each password left out."""
    public_sinks, mqtt_user, warnings = [], False, []
    for sink, kind in zip(plan.sinks, plan.kinds):
        if kind != "mqtt":
            public_sinks.append(sink)
            continue
        public, password = split_mqtt_password(sink)
        if password is not None:
            warnings.append(
                f"the MQTT password in {mask_url(sink)} is not put in the bundle; give it to install.sh on the "
                f"device: sudo ./install.sh --mqtt-password-file FILE (or {MQTT_PASSWORD_ENV} in its environment)"
            )
        mqtt_user = mqtt_user or "@" in public.partition("://")[2].partition("/")[0]
        public_sinks.append(public)
    return public_sinks, mqtt_user, warnings


def _wheel_files(plan: _Plan) -> tuple[dict[str, bytes], str, list[str]]:
    """wheels/: the edgecls wheel (given, or this checkout's) and, with a wheelhouse, its dependencies'; its name;
    and a warning when the built wheel could not be cached. Nothing when the device's pip installs --pip-spec."""
    if plan.pip_spec is not None:
        return {}, "", []
    files, warnings = {}, []
    with tempfile.TemporaryDirectory(prefix="edgecls-wheel-") as scratch:
        wheel_path = plan.wheel
        if wheel_path is None:
            wheel_path, problem = build_wheel_in(Path(scratch))
            if problem is not None:
                warnings.append(
                    f"{problem}: the wheel was built in a temporary folder, not kept for the next "
                    "bundle (set XDG_CACHE_HOME to a writable folder to keep it)"
                )
        files[f"wheels/{wheel_path.name}"] = wheel_path.read_bytes()
        if plan.wheelhouse:
            with tempfile.TemporaryDirectory(prefix="edgecls-wheelhouse-") as tmp:
                for dep in download_wheelhouse(wheel_path, plan.extras, plan.wheelhouse, Path(tmp)):
                    files[f"wheels/{dep.name}"] = dep.read_bytes()
    return files, wheel_path.name, warnings


def _profile_files(profile: Profile) -> dict[str, bytes]:
    """The profile, its boot configuration lines and (when it has some) the tool that puts them in place."""
    files = {
        "profile.toml": profile.to_toml().encode("utf-8"),
        "config.txt.fragment": profile.boot_fragment().encode("utf-8"),
    }
    if profile.boot_lines:
        files["edgecls_bootconfig.py"] = Path(__file__).with_name("bootconfig.py").read_bytes()
    return files


def _device_scripts(
    plan: _Plan,
    profile: Profile,
    files: dict[str, bytes],
    args: list[str],
    public_sinks: list[str],
    *,
    mqtt_user: bool,
    wheel: str,
) -> dict[str, bytes]:
    """The systemd unit that runs ``args`` and the install.sh that puts ``files`` (and itself) in place."""
    clear = _clear_args(
        [public for public, kind in zip(public_sinks, plan.kinds) if kind == "mqtt"],
        plan.discovery,
        retained="--mqtt-retain" in plan.extra,
    )
    installed = sorted(n for n in files if not n.startswith("wheels/"))
    script = install_script(
        profile,
        prefix=plan.prefix,
        user=plan.user,
        pip_spec=plan.pip_spec or "",
        wheel=wheel,
        extras=plan.extras,
        wheelhouse=WHEELHOUSE_TARGETS[plan.wheelhouse]["python"] if plan.wheelhouse else "",
        mqtt_user=mqtt_user,
        mqtt_clear=clear,
        files=[*installed, "README.txt", "bundle.json"],
    )
    return {
        SERVICE_NAME: service_unit(profile, prefix=plan.prefix, user=plan.user, args=args).encode("utf-8"),
        "install.sh": script.encode("utf-8"),
    }


def _readme_and_sums(
    plan: _Plan, profile: Profile, files: dict[str, bytes], args: list[str], *, wheel: str
) -> dict[str, bytes]:
    """README.txt, bundle.json (what was bundled, with each file's SHA-256) and SHA256SUMS (for sha256sum --check,
    which install.sh runs first)."""
    done = dict(files)
    done["README.txt"] = _readme(
        profile, plan.prefix, sorted(done) + ["README.txt", "bundle.json", "SHA256SUMS"], plan.wheelhouse
    ).encode("utf-8")
    done["bundle.json"] = json.dumps(
        {
            "edgecls": __version__,
            "profile": profile.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "prefix": plan.prefix,
            "user": plan.user,
            "command": args,
            "install": plan.pip_spec or f"wheels/{wheel}[{','.join(plan.extras)}]",
            "wheelhouse": plan.wheelhouse,
            "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(done.items())},
        },
        indent=2,
    ).encode("utf-8")
    done["SHA256SUMS"] = "".join(
        f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in sorted(done.items())
    ).encode("utf-8")
    return {name: done[name] for name in ("README.txt", "bundle.json", "SHA256SUMS")}


def _write_archive(out: Path, root: str, files: dict[str, bytes]) -> None:
    """``files`` under ``root/`` in a .tar.gz (scripts executable), written to ``out`` atomically."""
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
    atomic_write_bytes(out, buf.getvalue())


def _labels(model: Path) -> list[str] | None:
    found = labels_for_file(check_model_file(model))
    return list(found.names) if found else None


def _imx500_files(model: Path, profile: Profile) -> dict[str, bytes]:
    """The run's IMX500 package and labels, under imx500/ in the bundle; a ConfigError naming the fix without them."""
    run = model if model.is_dir() else model.parent
    package, labels = run / IMX500_FOLDER / IMX500_PACKAGE, run / IMX500_FOLDER / IMX500_LABELS
    if not package.is_file():
        raise ConfigError(
            f"profile {profile.name} runs the network on the AI Camera's sensor, and {package} is missing: make it "
            f"with edgecls export imx500 {run} (or convert with --target imx500)"
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


def _readme(profile: Profile, prefix: str, files: list[str], wheelhouse: str | None) -> str:
    state_dir, env_file = installer.STATE_DIR, installer.ENV_FILE
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
        f"user in {state_dir}; an MQTT password goes into {env_file} (root only) with --mqtt-password-file.",
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
