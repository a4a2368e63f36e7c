"""Device profiles: one TOML file per target board, validated on load (see ``firmware_configs/``).

A profile holds what a board needs to run `edgecls run` well: the camera (picamera2 sensor mode, main and lores
streams, buffers; or a USB camera's index, size and frame rate), interpreter threads, the delegate and its device,
smoothing defaults, and the lines the board's boot configuration (``/boot/firmware/config.txt``) needs, one comment
per line. `load_profile` finds a profile by name (``EDGECLS_PROFILE_PATH`` folders first, then the bundled ones) or
by path; `Profile.apply` fills a `StreamConfig` with it, where what the caller set (a command-line flag) wins.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from edgecls.errors import ConfigError
from edgecls.live.smoothing import Smoothing
from edgecls.live.sources import PICAMERA_FORMATS, PicameraOptions, SourceConfig
from edgecls.model.classifier import ClassifierConfig

if TYPE_CHECKING:
    from edgecls.live.stream import StreamConfig

PROFILE_PATH_ENV = "EDGECLS_PROFILE_PATH"
# What an AI Camera (source imx500) profile may set of picamera2's: the main stream the results carry, and controls.
IMX500_CAMERA_KEYS = {"main_size", "main_format", "buffer_count", "controls"}
BACKENDS = ("auto", "ai_edge_litert", "tflite_runtime", "tensorflow")


def _toml_loads(text: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    return tomllib.loads(text)


# -- schema --------------------------------------------------------------------------------------------------------

Check = Callable[[Any], "str | None"]  # returns what was expected, or None when the value is fine


def _control_free(value: str, *, newlines: bool = False) -> bool:
    allowed = "\n" if newlines else ""
    return not any((ord(c) < 32 and c not in allowed) or ord(c) == 127 for c in value)


def _string(value: Any) -> str | None:
    """A one-line text: these reach the systemd unit, install.sh and the boot configuration of a deploy bundle."""
    if isinstance(value, str) and value.strip() and _control_free(value):
        return None
    return "a non-empty string on one line, without control characters"


def _text(value: Any) -> str | None:
    ok = isinstance(value, str) and value.strip() and _control_free(value.replace("\t", " "), newlines=True)
    return None if ok else "a non-empty text without control characters"


NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"


def _name(value: Any) -> str | None:
    import re

    if isinstance(value, str) and re.fullmatch(NAME_PATTERN, value):
        return None
    return "a name of letters, digits, '.', '_' and '-' (at most 64, starting with a letter or digit)"


def _int(low: int) -> Check:
    def check(value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
        return None if ok else f"an integer >= {low}"

    return check


def _number(low: float, high: float | None = None, *, low_open: bool = False) -> Check:
    def check(value: Any) -> str | None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and (value > low if low_open else value >= low) and (high is None or value <= high)
        bound = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")
        return None if ok else f"a number {bound}"

    return check


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _choice(*options: str) -> Check:
    return lambda value: None if value in options else "one of " + ", ".join(repr(o) for o in options)


def _size(value: Any) -> str | None:
    ok = isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and v >= 16 for v in value)
    return None if ok else "[width, height], two integers >= 16"


def _table(value: Any) -> str | None:
    return None if isinstance(value, dict) else "a table"


def _device(value: Any) -> str | None:
    from edgecls.model.delegates import DEVICE_FORMS, check_device

    if not isinstance(value, str):
        return DEVICE_FORMS
    try:
        check_device(value)
    except ConfigError:
        return DEVICE_FORMS
    return None


SCHEMA: dict[str, Any] = {
    "name": (_name, True),
    "description": (_string, True),
    "board": (_string, True),
    "latency_factor": (_number(0.0, low_open=True), False),
    "camera": (
        {
            "source": (_string, True),
            "width": (_int(16), False),
            "height": (_int(16), False),
            "fps": (_number(0.0, low_open=True), False),
            "main_size": (_size, False),
            "main_format": (_choice(*PICAMERA_FORMATS), False),
            "lores_size": (_size, False),
            "lores_format": (_choice(*PICAMERA_FORMATS), False),
            "buffer_count": (_int(2), False),
            "sensor_mode": (_int(0), False),
            "controls": (_table, False),
        },
        True,
    ),
    "runtime": (
        {
            "threads": (_int(1), False),
            "backend": (_choice(*BACKENDS), False),
            "delegate": (_string, False),
            "device": (_device, False),
            "allow_cpu_fallback": (_bool, False),
        },
        True,
    ),
    "smoothing": (
        {
            "ema": (_number(0.0, 1.0, low_open=True), False),
            "hold": (_int(1), False),
            "margin": (_number(0.0, 1.0, low_open=True), False),
            "min_score": (_number(0.0, 1.0), False),
        },
        False,
    ),
    "boot": (
        {
            "file": (_string, False),
            "notes": (_text, False),
            "config": ([{"line": (_string, True), "comment": (_string, True)}], False),
        },
        False,
    ),
}


def validate(data: dict[str, Any], *, origin: str) -> None:
    """Check ``data`` against the profile schema; the ConfigError names the file, the key and what it expects."""
    _validate(data, SCHEMA, origin, "")
    runtime = data["runtime"]
    if runtime.get("device") and runtime.get("delegate") != "edgetpu":
        raise ConfigError(
            f"profile {origin}: runtime.device is an Edge TPU setting; it needs runtime.delegate = 'edgetpu'"
        )
    camera = data["camera"]
    picam = camera["source"] == "picam" or camera["source"].startswith("picam:")
    imx500 = camera["source"] == "imx500" or camera["source"].startswith("imx500:")
    picam_keys = {"main_size", "main_format", "lores_size", "lores_format", "buffer_count", "sensor_mode", "controls"}
    allowed = picam_keys if picam else IMX500_CAMERA_KEYS if imx500 else set()
    if (picam_keys - allowed) & set(camera):
        extra = ", ".join(sorted((picam_keys - allowed) & set(camera)))
        where = "a picam source" + (" (the AI Camera's network sees the sensor's own crop)" if imx500 else "")
        raise ConfigError(f"profile {origin}: camera.{extra} only apply to {where} (source is {camera['source']!r})")
    if (picam or imx500) and {"width", "height"} & set(camera):
        raise ConfigError(
            f"profile {origin}: camera source {camera['source']!r} takes camera.main_size, not width/height"
        )
    if imx500 and camera.get("main_format") == "YUV420":
        raise ConfigError(
            f"profile {origin}: the AI Camera's camera.main_format is one of the RGB formats "
            f"(RGB888, BGR888, XRGB8888, XBGR8888); received 'YUV420'"
        )
    if imx500 and runtime:
        raise ConfigError(
            f"profile {origin}: runtime.{min(runtime)} sets the TFLite interpreter on the CPU; the "
            "AI Camera (source imx500) runs the network on its sensor: leave [runtime] empty"
        )
    lores, main = camera.get("lores_size"), camera.get("main_size")
    if lores and main and (lores[0] > main[0] or lores[1] > main[1]):
        raise ConfigError(f"profile {origin}: camera.lores_size must not be larger than camera.main_size")


def _validate(data: Any, schema: dict[str, Any], origin: str, prefix: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"profile {origin}: {prefix.rstrip('.') or 'the file'} must be a table")
    unknown = sorted(set(data) - set(schema))
    if unknown:
        raise ConfigError(
            f"profile {origin}: unknown key {prefix}{unknown[0]}; expected one of {', '.join(sorted(schema))}"
        )
    for key, (rule, required) in schema.items():
        where = f"{prefix}{key}"
        if key not in data:
            if required:
                raise ConfigError(f"profile {origin}: missing {where}")
            continue
        value = data[key]
        if isinstance(rule, dict):
            _validate(value, rule, origin, where + ".")
        elif isinstance(rule, list):
            if not isinstance(value, list):
                raise ConfigError(f"profile {origin}: {where} must be an array of tables ([[{where}]])")
            for i, item in enumerate(value):
                _validate(item, rule[0], origin, f"{where}[{i}].")
        else:
            expected = rule(value)
            if expected:
                raise ConfigError(f"profile {origin}: {where} must be {expected} (received {value!r})")


# -- the profile ---------------------------------------------------------------------------------------------------

# The camera keys that are picamera2's settings (a picam or the AI Camera's source).
PICAMERA_KEYS = ("main_size", "main_format", "lores_size", "lores_format", "buffer_count", "sensor_mode", "controls")
Config = TypeVar("Config")


def _fill(mine: Config, other: Config) -> Config:
    """``mine`` with each field it leaves None taken from ``other``."""
    unset = {f.name: getattr(other, f.name) for f in fields(mine) if getattr(mine, f.name) is None}  # type: ignore[arg-type]
    return replace(mine, **unset)  # type: ignore[type-var]


@dataclass(frozen=True)
class Profile:
    """A validated device profile. ``data`` is the TOML content; the properties read it with defaults filled in."""

    name: str
    data: dict[str, Any]
    path: Path | None = None

    @property
    def description(self) -> str:
        return str(self.data["description"])

    @property
    def camera(self) -> dict[str, Any]:
        return dict(self.data["camera"])

    @property
    def runtime(self) -> dict[str, Any]:
        return dict(self.data["runtime"])

    @property
    def smoothing(self) -> dict[str, Any]:
        return dict(self.data.get("smoothing", {}))

    @property
    def boot_lines(self) -> list[dict[str, str]]:
        return list(self.data.get("boot", {}).get("config", []))

    @property
    def latency_factor(self) -> float | None:
        value = self.data.get("latency_factor")
        return float(value) if value is not None else None

    def source_config(self) -> SourceConfig:
        """The profile's camera: its ``--source``, the size and rate to ask for, picamera2's settings."""
        cam = self.camera
        if cam["source"].partition(":")[0] in ("picam", "imx500"):  # picamera2's settings (the AI Camera's too)
            picamera = PicameraOptions(**{k: cam[k] for k in PICAMERA_KEYS if k in cam})
            return SourceConfig(cam["source"], fps=cam.get("fps"), picamera=picamera)
        return SourceConfig(cam["source"], width=cam.get("width"), height=cam.get("height"), fps=cam.get("fps"))

    def classifier_config(self) -> ClassifierConfig:
        """The profile's interpreter settings (threads, backend, delegate and its device, CPU fallback)."""
        runtime = self.runtime
        return ClassifierConfig(
            num_threads=runtime.get("threads"),
            backend=runtime.get("backend"),
            delegate=runtime.get("delegate"),
            device=runtime.get("device"),
            allow_cpu_fallback=bool(runtime.get("allow_cpu_fallback", False)),
        )

    def smoothing_config(self) -> Smoothing:
        """The profile's smoothing (what it leaves out stays unset: the built-in default)."""
        smooth = self.smoothing
        return Smoothing(
            alpha=smooth.get("ema"),
            hold=smooth.get("hold"),
            margin=smooth.get("margin"),
            min_score=smooth.get("min_score"),
        )

    def apply(self, config: StreamConfig) -> StreamConfig:
        """``config`` with what it leaves unset taken from this profile; what it sets wins. The same merge as
        ``edgecls run --profile``:

        - no source: the profile's camera. The camera's size, rate and picamera2 settings fill the unset ones only
          when the source is the profile's camera (the AI Camera's with any network: ``imx500:RPK``).
        - the interpreter: threads and backend when unset; the delegate with its device when neither is set (one
          given replaces the profile's, with its device); the CPU fallback when either allows it. None of it when
          the source is the AI Camera (the network runs on the sensor).
        - each smoothing field left unset (see `Smoothing.unset`).

        >>> load_profile("rpi5").apply(StreamConfig(smoothing=Smoothing(hold=5))).smoothing  # doctest: +SKIP
        Smoothing(alpha=0.4, hold=5, margin=0.25, min_score=0.3)
        """
        from edgecls.live.imx500 import is_imx500_source

        camera = self.source_config()
        source = config.source
        if source.spec is None:
            source = replace(source, spec=camera.spec)
        if source.spec == camera.spec or (is_imx500_source(source.spec) and is_imx500_source(camera.spec)):
            picamera = _fill(source.picamera, camera.picamera) if source.picamera else camera.picamera
            source = replace(_fill(source, camera), picamera=picamera)
        classifier = config.classifier
        if not is_imx500_source(source.spec):
            own = self.classifier_config()
            pair = own if classifier.delegate is None and classifier.device is None else classifier
            classifier = replace(
                _fill(classifier, own),
                delegate=pair.delegate,  # the delegate and its device come together, from one side
                device=pair.device,
                allow_cpu_fallback=classifier.allow_cpu_fallback or own.allow_cpu_fallback,
            )
        return replace(
            config, source=source, classifier=classifier, smoothing=config.smoothing.fill(self.smoothing_config())
        )

    def boot_fragment(self) -> str:
        """The lines for the boot configuration file, each under its comment ("" when the board needs none)."""
        boot = self.data.get("boot", {})
        lines = [f"# edgecls profile {self.name}: {self.description}"]
        if boot.get("notes"):
            lines += [f"# {line}" for line in str(boot["notes"]).splitlines()]
        if not self.boot_lines:
            return "\n".join(lines + ["# (nothing to add for this board)"]) + "\n"
        lines.append(f"# add to {boot.get('file', '/boot/firmware/config.txt')}, then reboot")
        for entry in self.boot_lines:
            lines += [f"# {entry['comment']}", entry["line"]]
        return "\n".join(lines) + "\n"

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(self.data)


def parse_profile(text: str, *, origin: str, path: Path | None = None) -> Profile:
    """Parse and validate a profile's TOML text."""
    try:
        data = _toml_loads(text)
    except ValueError as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise ConfigError(f"profile {origin} is not valid TOML ({exc})") from None
    validate(data, origin=origin)
    return Profile(str(data["name"]), data, path)


def bundled_dir() -> Path:
    """The folder of the profiles that ship with edgecls (package data of ``edgecls.firmware_configs``, which is
    the ``firmware_configs/`` folder of a checkout)."""
    from importlib.resources import files

    return Path(str(files("edgecls.firmware_configs")))


def search_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get(PROFILE_PATH_ENV, "").split(os.pathsep) if p]
    return [*extra, bundled_dir()]


def list_profiles() -> list[Profile]:
    """Every profile found (a name in an ``EDGECLS_PROFILE_PATH`` folder hides the bundled one)."""
    found: dict[str, Profile] = {}
    for folder in search_dirs():
        for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
            if path.stem not in found:
                found[path.stem] = _load(path, named=True)
    return [found[name] for name in sorted(found)]


def load_profile(name_or_path: str | os.PathLike[str]) -> Profile:
    """Load a profile by name (``rpi5``) or by path (``./my-board.toml``); raises ConfigError when it is invalid.

    A profile found by name must carry that name (``rpi5.toml`` says ``name = "rpi5"``); a file given by path may
    be called anything (a deploy bundle installs its profile as ``profile.toml``)."""
    text = os.fspath(name_or_path)
    if text.endswith(".toml") or os.sep in text:
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"profile file not found: {path}")
        return _load(path, named=False)
    candidates = [folder / f"{text}.toml" for folder in search_dirs()]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        names = sorted({p.stem for folder in search_dirs() if folder.is_dir() for p in folder.glob("*.toml")})
        raise ConfigError(f"no profile named {text!r}; available: {', '.join(names)} (or pass a .toml path)")
    return _load(found, named=True)


def _load(path: Path, *, named: bool) -> Profile:
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read profile {path} ({exc})") from None
    profile = parse_profile(content, origin=str(path), path=path)
    if named and profile.name != path.stem:
        raise ConfigError(f"profile {path}: name = {profile.name!r} must match the file name ({path.stem!r})")
    return profile
