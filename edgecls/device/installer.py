"""What runs as root on the device: the systemd unit and install.sh of a deploy bundle.

Both are files of this package (``scripts/edgecls.service`` and ``scripts/install.sh``) with ``@NAME@`` placeholders,
filled in one pass (a value is never scanned for placeholders again) and only with values validated here and
quoted for their context: systemd's quoting in the unit (`systemd_quote`), the shell's in install.sh (every value
a ``NAME='...'`` assignment at the top of the script, `shlex.quote`). No value may hold a control character, so
none can start a line of its own in either file.
"""

from __future__ import annotations

import re
import shlex
from importlib import resources

from edgecls.device.profiles import Profile
from edgecls.errors import ConfigError
from edgecls.sinks.base import has_control_chars
from edgecls.sinks.mqtt import MQTT_PASSWORD_ENV, mask_url

SERVICE_NAME = "edgecls.service"
# The AI Camera's packages, in Raspberry Pi's archive only: the sensor's firmware and imx500-package.
IMX500_PACKAGES = "imx500-all imx500-tools"
# The service's working directory (StateDirectory=edgecls); relative sink paths land here.
STATE_DIR = "/var/lib/edgecls"
ENV_FILE = "/etc/edgecls/edgecls.env"  # root-only (0600): the secrets the service reads
USER_PATTERN = r"[a-z_][a-z0-9_-]{0,31}"
PREFIX_PATTERN = r"(/[A-Za-z0-9_][A-Za-z0-9._+-]*)+"
PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")
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


def is_imx500_profile(profile: Profile) -> bool:
    """Whether the profile's camera is the AI Camera, which runs the network on its sensor."""
    return str(profile.camera["source"]).partition(":")[0] == "imx500"


# -- the templates -------------------------------------------------------------------------------------------------


def template(name: str) -> str:
    """The text of ``scripts/NAME``, shipped with this package."""
    return resources.files("edgecls.device").joinpath("scripts", name).read_text(encoding="utf-8")


def render(text: str, values: dict[str, str]) -> str:
    """``text`` with each ``@NAME@`` replaced by ``values[NAME]``, in one pass: what a value holds is never read as a
    placeholder. Every placeholder must have a value and every value a placeholder (a template and its caller that
    drift apart are a bug, not a file with a hole in it)."""
    found = set(PLACEHOLDER.findall(text))
    if found != set(values):
        raise ValueError(f"template placeholders {sorted(found)} do not match the values {sorted(values)}")
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


# -- the systemd unit ----------------------------------------------------------------------------------------------


def systemd_quote(arg: str) -> str:
    """Quote one ExecStart argument for systemd (which expands % specifiers and $ variables)."""
    if has_control_chars(arg):
        raise ConfigError(f"{arg.encode('unicode_escape').decode()!r} holds control characters")
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"' if any(c in arg for c in " \t\"'\\;") or escaped != arg else arg


def service_unit(profile: Profile, *, prefix: str, user: str, args: list[str]) -> str:
    """The unit that runs ``args`` (`edgecls run ...`) as ``user`` at boot and restarts it on failure."""
    check_prefix(prefix)
    check_user(user)
    edgetpu = profile.runtime.get("delegate") == "edgetpu"
    # Description is a plain value: % starts a specifier, a trailing backslash would continue the line.
    description = check_arg("description", f"{profile.name}: {profile.description}")
    values = {
        "DESCRIPTION": description.replace("\\", "/").replace("%", "%%"),
        "PREFIX": prefix,
        "AFTER": "network-online.target" + (" systemd-udev-settle.service" if edgetpu else ""),
        "USER": user,
        "STATE_DIRECTORY": STATE_DIR.rsplit("/", 1)[1],
        "STATE_DIR": check_arg("STATE_DIR", STATE_DIR),
        "ENV_FILE": check_arg("ENV_FILE", ENV_FILE),
        "EXEC_START": " ".join(systemd_quote(a) for a in args),
    }
    return render(template(SERVICE_NAME), values)


# -- install.sh ----------------------------------------------------------------------------------------------------


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
    """The bundle's install.sh (scripts/install.sh); every value in it is validated and shell-quoted."""
    check_prefix(prefix)
    check_user(user)
    values = _install_values(
        profile,
        prefix=prefix,
        user=user,
        pip_spec=pip_spec,
        wheel=wheel,
        extras=extras,
        wheelhouse=wheelhouse,
        mqtt_user=mqtt_user,
    )
    arrays = {
        "INSTALL_FILES": files,
        "BOOT_ARGS": [arg for entry in profile.boot_lines for arg in ("--line", entry["line"], entry["comment"])],
        "MQTT_CLEAR": mqtt_clear or [],
    }
    # the profile's name also goes into the script's first comment: one line, like every value
    header = {"PROFILE": check_arg("profile", profile.name)}
    return render(template("install.sh"), {**header, "VALUES": _shell_assignments(values, arrays)})


def _install_values(
    profile: Profile,
    *,
    prefix: str,
    user: str,
    pip_spec: str,
    wheel: str,
    extras: list[str],
    wheelhouse: str,
    mqtt_user: bool,
) -> dict[str, str]:
    """install.sh's settings: what the bundle holds and what the profile's board needs installed."""
    imx500 = is_imx500_profile(profile)
    picam = profile.camera["source"].startswith("picam") or imx500
    edgetpu = profile.runtime.get("delegate") == "edgetpu"
    pci = edgetpu and str(profile.runtime.get("device", "")).startswith("pci")
    boot = profile.data.get("boot", {})
    return {
        "PROFILE": profile.name,
        "PREFIX": prefix,
        "SERVICE_USER": user,
        "STATE_DIR": STATE_DIR,
        "ENV_FILE": ENV_FILE,
        "SERVICE": SERVICE_NAME,
        "PIP_SPEC": check_arg("--pip-spec", pip_spec),
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


def _shell_assignments(values: dict[str, str], arrays: dict[str, list[str]]) -> str:
    """``NAME='value'`` lines and ``NAME=('a' 'b')`` arrays, each value checked for control characters and
    shell-quoted: the only generated lines of install.sh."""
    lines = [f"{name}={_sh_quote(check_arg(name, value))}" for name, value in values.items()]
    for name, items in arrays.items():
        what = "mqtt-clear argument" if name == "MQTT_CLEAR" else name
        lines.append(f"{name}=(" + " ".join(_sh_quote(check_arg(what, item)) for item in items) + ")")
    return "\n".join(lines)


def _sh_quote(value: str) -> str:
    """`shlex.quote`, in single quotes even where the value needs none: every value reads as data (shellcheck
    reads ``WHEEL=edgecls-1.0-py3-none-any.whl`` as arithmetic)."""
    quoted = shlex.quote(value)
    return quoted if quoted.startswith("'") else f"'{quoted}'"
