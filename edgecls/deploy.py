"""`edgecls deploy`: one archive with everything a device needs to classify at boot.

The bundle (``edgecls-<profile>/`` inside a .tar.gz) holds the model (and its Edge TPU build when one sits beside
it), its labels, the device profile, the boot configuration fragment, a systemd unit that runs `edgecls run` at boot
and restarts it on failure, an install script for the device, and a README. The archive is written atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .delegates import compiled_sibling, cpu_sibling
from .errors import ConfigError
from .fsutil import atomic_write_bytes
from .labels import labels_for_file
from .metadata import check_model_file
from .profiles import Profile

SERVICE_NAME = "edgecls.service"


@dataclass(frozen=True)
class Bundle:
    path: Path
    root: str  # the folder inside the archive
    files: dict[str, int]  # name -> size in bytes
    warnings: tuple[str, ...] = field(default=())


def build_bundle(
    model: str | os.PathLike[str],
    profile: Profile,
    out: str | os.PathLike[str],
    *,
    sinks: list[str] | None = None,
    prefix: str = "/opt/edgecls",
    user: str = "edgecls",
    pip_spec: str | None = None,
    extra_args: list[str] | None = None,
) -> Bundle:
    """Write the deploy bundle for ``model`` on ``profile`` to ``out`` (a .tar.gz); returns what it holds."""
    if not prefix.startswith("/"):
        raise ConfigError(f"--prefix must be an absolute path on the device (received {prefix!r})")
    out_path = Path(out)
    if not out_path.name.endswith((".tar.gz", ".tgz")):
        raise ConfigError(f"the bundle is a .tar.gz archive; name it so (received {out_path.name})")
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
    labels = _labels(cpu_model if "model.tflite" in files else info.path)
    if labels:
        files["labels.txt"] = ("\n".join(labels) + "\n").encode("utf-8")
    else:
        warnings.append("the model carries no labels and none sit beside it: results will show class indices")
    model_name = "model.tflite" if "model.tflite" in files else "model_edgetpu.tflite"
    files["profile.toml"] = profile.to_toml().encode("utf-8")
    files["config.txt.fragment"] = profile.boot_fragment().encode("utf-8")
    args = _run_args(prefix, model_name, labels is not None, sinks or [], extra_args or [])
    files[SERVICE_NAME] = service_unit(profile, prefix=prefix, user=user, args=args).encode("utf-8")
    spec = pip_spec or _default_pip_spec(sinks or [])
    files["install.sh"] = install_script(profile, prefix=prefix, user=user, pip_spec=spec, files=sorted(files)).encode()
    files["README.txt"] = _readme(profile, prefix, sorted(files) + ["README.txt", "bundle.json"]).encode("utf-8")
    files["bundle.json"] = json.dumps(
        {
            "edgecls": __version__,
            "profile": profile.name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "prefix": prefix,
            "user": user,
            "command": args,
            "sha256": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
        },
        indent=2,
    ).encode("utf-8")

    root = f"edgecls-{profile.name}"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        folder = tarfile.TarInfo(root)
        folder.type, folder.mode, folder.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
        tar.addfile(folder)
        for name, data in sorted(files.items()):
            item = tarfile.TarInfo(f"{root}/{name}")
            item.size, item.mtime = len(data), int(time.time())
            item.mode = 0o755 if name.endswith(".sh") else 0o644
            tar.addfile(item, io.BytesIO(data))
    atomic_write_bytes(out_path, buf.getvalue())
    return Bundle(out_path, root, {name: len(data) for name, data in files.items()}, tuple(warnings))


def _labels(model: Path) -> list[str] | None:
    found = labels_for_file(check_model_file(model))
    return list(found.names) if found else None


def _default_pip_spec(sinks: list[str]) -> str:
    extras = ["camera"] + (["mqtt"] if any(s.startswith("mqtt") for s in sinks) else [])
    return f"edgecls[{','.join(extras)}]=={__version__}"


def _run_args(prefix: str, model_name: str, labels: bool, sinks: list[str], extra: list[str]) -> list[str]:
    args = [f"{prefix}/venv/bin/edgecls", "run", f"{prefix}/{model_name}", "--profile", f"{prefix}/profile.toml"]
    if labels:
        args += ["--labels", f"{prefix}/labels.txt"]
    for sink in sinks:
        args += ["--sink", sink]
    # With sinks, results go there; without, decisions that change go to the journal. Statistics every minute.
    args += ["--quiet"] if sinks else ["--on-change"]
    args += ["--stats-every", "60", *extra]
    return args


def _systemd_quote(arg: str) -> str:
    """Quote one ExecStart argument for systemd (which expands % specifiers and $ variables)."""
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"' if any(c in arg for c in " \t\"'\\;") or escaped != arg else arg


def service_unit(profile: Profile, *, prefix: str, user: str, args: list[str]) -> str:
    edgetpu = profile.runtime.get("delegate") == "edgetpu"
    after = "network-online.target" + (" systemd-udev-settle.service" if edgetpu else "")
    return f"""[Unit]
Description=edgecls live classification ({profile.name}: {profile.description})
Documentation=file:{prefix}/README.txt
After={after}
Wants=network-online.target

[Service]
Type=simple
User={user}
WorkingDirectory={prefix}
Environment=PYTHONUNBUFFERED=1
ExecStart={' '.join(_systemd_quote(a) for a in args)}
# edgecls run stops cleanly on SIGTERM, with every sink flushed.
KillSignal=SIGTERM
TimeoutStopSec=20
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
"""


def install_script(profile: Profile, *, prefix: str, user: str, pip_spec: str, files: list[str]) -> str:
    picam = profile.camera["source"].startswith("picam")
    edgetpu = profile.runtime.get("delegate") == "edgetpu"
    pci = edgetpu and str(profile.runtime.get("device", "")).startswith("pci")
    boot_file = profile.data.get("boot", {}).get("file", "")
    groups = "video plugdev" + (" apex" if pci else "")
    install_files = " ".join(shlex.quote(f) for f in [*files, "README.txt"] if f not in ("install.sh", SERVICE_NAME))
    q = shlex.quote
    return f"""#!/usr/bin/env bash
# Install this edgecls bundle (profile {profile.name}) on the device: the runtime in a venv under {prefix},
# the model and profile beside it, the boot configuration lines, and the {SERVICE_NAME} systemd service.
#   sudo ./install.sh [--dry-run] [--no-boot-config] [--no-start]
# EDGECLS_PIP_SPEC overrides what pip installs (default {pip_spec}; a wheel path works offline).
set -euo pipefail

PREFIX={q(prefix)}
SERVICE_USER={q(user)}
PIP_SPEC="${{EDGECLS_PIP_SPEC:-{pip_spec}}}"
BOOT_FILE={q(boot_file)}
HERE="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
DRY_RUN=0
BOOT_CONFIG=1
START=1
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    --no-boot-config) BOOT_CONFIG=0 ;;
    --no-start) START=0 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
  esac
done

run() {{
  # Print each step; with --dry-run, only print it.
  echo "+ $*"
  if [ "$DRY_RUN" = 0 ]; then "$@"; fi
}}

if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
  echo "install.sh: run it as root: sudo $0" >&2
  exit 1
fi
command -v python3 >/dev/null || {{ echo "install.sh: python3 is missing: sudo apt-get install python3 python3-venv" >&2; exit 1; }}
{'''
# The picam source needs picamera2 from Raspberry Pi OS packages (the venv sees it through system site packages).
if ! python3 -c "import picamera2" 2>/dev/null; then
  run apt-get install -y python3-picamera2
fi''' if picam else ''}
{'''
# The Edge TPU runtime comes from the Coral apt repository (https://coral.ai/software/#debian-packages).
if ! ldconfig -p | grep -q "libedgetpu.so.1"; then
  echo "install.sh: libedgetpu.so.1 is not installed. Add the Coral apt repository, then:" >&2
  echo "  sudo apt-get install libedgetpu1-std''' + (' gasket-dkms' if pci else '') + '''" >&2
  [ "$DRY_RUN" = 1 ] || exit 1
fi''' if edgetpu else ''}

# A system user for the service, in the groups that own cameras{' and the Edge TPU' if edgetpu else ''}.
if ! id "$SERVICE_USER" >/dev/null 2>&1; then
  run useradd --system --home-dir "$PREFIX" --shell /usr/sbin/nologin "$SERVICE_USER"
fi
for group in {groups}; do
  getent group "$group" >/dev/null || run groupadd --system "$group"
  run usermod -aG "$group" "$SERVICE_USER"
done

run install -d -m 755 "$PREFIX"
run python3 -m venv --system-site-packages "$PREFIX/venv"
run "$PREFIX/venv/bin/pip" install --upgrade "$PIP_SPEC"
for f in {install_files}; do
  run install -m 644 "$HERE/$f" "$PREFIX/$f"
done

NEED_REBOOT=0
if [ "$BOOT_CONFIG" = 1 ] && [ -n "$BOOT_FILE" ] && grep -qv '^#' "$HERE/config.txt.fragment"; then
  if [ ! -f "$BOOT_FILE" ]; then
    echo "install.sh: $BOOT_FILE not found; add the lines in config.txt.fragment to the boot configuration yourself" >&2
  elif grep -q "^# >>> edgecls" "$BOOT_FILE"; then
    echo "install.sh: $BOOT_FILE already has an edgecls block; left as it is (compare with config.txt.fragment)"
  else
    run cp "$BOOT_FILE" "$BOOT_FILE.edgecls-backup"
    if [ "$DRY_RUN" = 0 ]; then
      {{ echo "# >>> edgecls {profile.name}"; cat "$HERE/config.txt.fragment"; echo "# <<< edgecls"; }} >> "$BOOT_FILE"
    else
      echo "+ append config.txt.fragment to $BOOT_FILE"
    fi
    NEED_REBOOT=1
  fi
fi

run install -m 644 "$HERE/{SERVICE_NAME}" /etc/systemd/system/{SERVICE_NAME}
run systemctl daemon-reload
if [ "$START" = 1 ] && [ "$NEED_REBOOT" = 0 ]; then
  run systemctl enable --now {SERVICE_NAME}
else
  run systemctl enable {SERVICE_NAME}
fi
if [ "$NEED_REBOOT" = 1 ]; then
  echo "installed; reboot to apply the boot configuration ($BOOT_FILE.edgecls-backup holds the old one)"
else
  echo "installed; follow it with: journalctl -u {SERVICE_NAME} -f"
fi
"""


def _readme(profile: Profile, prefix: str, files: list[str]) -> str:
    lines = [
        f"edgecls deploy bundle for {profile.name}: {profile.description}",
        "",
        "On the device:",
        f"  tar xzf edgecls-{profile.name}.tar.gz && cd edgecls-{profile.name} && sudo ./install.sh",
        "  (--dry-run shows every step without doing it)",
        "",
        f"It installs edgecls in {prefix}/venv, the files below in {prefix}, the boot configuration lines in",
        f"config.txt.fragment, and enables {SERVICE_NAME} (logs: journalctl -u {SERVICE_NAME} -f).",
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
