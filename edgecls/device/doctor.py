"""`edgecls doctor`: what this machine has for running classifiers, and the command that fixes each problem.

Every check returns a `Finding`; nothing here raises or prints. ``root`` (default ``/``) is where ``/sys``, ``/dev``
and ``/proc`` are read from, so the device checks can be exercised on a prepared folder tree.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

OK, WARN, FAIL, INFO = "ok", "warn", "fail", "info"

# Edge TPU USB ids: before its firmware is loaded it enumerates as Global Unichip, afterwards as Google.
EDGETPU_USB_IDS = {
    ("1a6e", "089a"): "Coral USB Accelerator (firmware not loaded yet)",
    ("18d1", "9302"): "Coral USB Accelerator",
}
EDGETPU_PCI_IDS = {("0x1ac1", "0x089a"): "Coral PCIe/M.2 Accelerator"}


@dataclass(frozen=True)
class Finding:
    check: str
    status: str  # ok, warn, fail or info
    detail: str
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def diagnose(root: str | os.PathLike[str] = "/", extra: Sequence[Callable[[], list[Finding]]] = ()) -> list[Finding]:
    """Run every check, then ``extra`` ones (the CLI adds the host converter's); never raises (a check that crashes
    becomes a warning naming it)."""
    base = Path(root)
    checks: list[Callable[[], list[Finding]]] = [
        _python,
        _backends,
        _numpy_tflite_runtime,
        _opencv,
        lambda: _picamera2(base),
        _libedgetpu,
        lambda: _edgetpu_devices(base),
        lambda: _cameras(base),
        *extra,
    ]
    findings: list[Finding] = []
    for check in checks:
        try:
            findings += check()
        except Exception as exc:  # a diagnostic must not take the report down
            findings.append(Finding(getattr(check, "__name__", "check"), WARN, f"check failed: {exc!r}"))
    return findings


def is_raspberry_pi(root: Path) -> str | None:
    for name in ("proc/device-tree/model", "sys/firmware/devicetree/base/model"):
        try:
            model = (root / name).read_bytes().decode("utf-8", "replace").strip("\x00\n ")
        except OSError:
            continue
        if "Raspberry Pi" in model:
            return model
    return None


def _python() -> list[Finding]:
    version = platform.python_version()
    detail = f"Python {version} on {platform.system()} {platform.machine()}"
    return [Finding("python", OK, detail)]


def _backends() -> list[Finding]:
    from edgecls.model.backends import available_backends

    found = available_backends()
    usable = [name for name, version in found.items() if not version.startswith("not available")]
    findings = [
        Finding(f"backend {name}", OK if name in usable else INFO, f"{name} {version}" if name in usable else version)
        for name, version in found.items()
    ]
    if not usable:
        findings.append(
            Finding("interpreter", FAIL, "no TFLite interpreter is importable", "pip install ai-edge-litert")
        )
    elif "ai_edge_litert" not in usable:
        fix = "pip install ai-edge-litert" if sys.version_info >= (3, 10) else None
        findings.append(
            Finding("interpreter", WARN, f"using {usable[0]}; ai-edge-litert (with XNNPACK) is faster", fix)
        )
    else:
        findings.append(Finding("interpreter", OK, "ai-edge-litert will be used"))
    return findings


def _numpy_tflite_runtime() -> list[Finding]:
    import numpy

    try:
        from importlib.metadata import version

        tflite_runtime = version("tflite-runtime")
    except Exception:
        return [Finding("numpy", OK, f"numpy {numpy.__version__}")]
    major = int(numpy.__version__.split(".")[0])
    if major >= 2:
        return [
            Finding(
                "numpy",
                WARN,
                f"numpy {numpy.__version__} with tflite-runtime {tflite_runtime}: tflite-runtime is built against "
                "numpy 1 and fails to import under numpy 2",
                "use ai-edge-litert (pip install ai-edge-litert), or a separate venv with pip install 'numpy<2' "
                "tflite-runtime",
            )
        ]
    return [Finding("numpy", OK, f"numpy {numpy.__version__} (works with tflite-runtime {tflite_runtime})")]


def _opencv() -> list[Finding]:
    try:
        cv2 = importlib.import_module("cv2")
    except ImportError:
        return [
            Finding(
                "opencv",
                WARN,
                "OpenCV is not installed: no USB cameras, video files or network streams (images and picamera2 work)",
                "pip install 'edgecls[camera]'",
            )
        ]
    info = cv2.getBuildInformation()
    gstreamer = any("GStreamer" in line and "YES" in line for line in info.splitlines())
    detail = f"OpenCV {cv2.__version__}" + (", with GStreamer" if gstreamer else ", without GStreamer (pip wheel)")
    return [Finding("opencv", OK, detail)]


def _picamera2(root: Path) -> list[Finding]:
    pi = is_raspberry_pi(root)
    try:
        importlib.import_module("picamera2")
    except ImportError:
        if pi:
            return [
                Finding(
                    "picamera2",
                    FAIL,
                    f"{pi}: picamera2 is not importable from this Python ({sys.executable})",
                    "sudo apt install python3-picamera2, and make the venv with system site packages: "
                    "python3 -m venv --system-site-packages .venv",
                )
            ]
        return [Finding("picamera2", INFO, "not a Raspberry Pi; picamera2 not needed (USB cameras use OpenCV)")]
    except Exception as exc:  # picamera2 imports libcamera, which can fail in odd ways
        return [Finding("picamera2", WARN, f"picamera2 is installed but fails to import ({exc})")]
    return [Finding("picamera2", OK, "picamera2 is importable" + (f" on {pi}" if pi else ""))]


def _libedgetpu() -> list[Finding]:
    from edgecls.model.delegates import LIBRARY_ENV, edgetpu_library

    try:
        library = edgetpu_library()
    except Exception as exc:
        return [Finding("libedgetpu", INFO, str(exc))]
    try:
        ctypes.CDLL(library)
    except OSError:
        where = f" ({LIBRARY_ENV}={os.environ[LIBRARY_ENV]})" if os.environ.get(LIBRARY_ENV) else ""
        return [
            Finding(
                "libedgetpu",
                WARN,
                f"the Edge TPU runtime {library} is not installed{where}; needed only with a Coral accelerator",
                "add the Coral apt repository (https://coral.ai/software/#debian-packages), then "
                "sudo apt-get install libedgetpu1-std",
            )
        ]
    return [Finding("libedgetpu", OK, f"{library} loads")]


def _edgetpu_devices(root: Path) -> list[Finding]:
    found = []
    usb = root / "sys/bus/usb/devices"
    for dev in sorted(usb.iterdir()) if usb.is_dir() else []:
        ids = (_read(dev / "idVendor"), _read(dev / "idProduct"))
        if ids in EDGETPU_USB_IDS:
            speed = _read(dev / "speed")
            slow = speed is not None and speed.isdigit() and int(speed) < 5000
            found.append(
                Finding(
                    "edgetpu usb",
                    WARN if slow else OK,
                    f"{EDGETPU_USB_IDS[ids]} at {dev.name}" + (f", {speed} Mb/s" if speed else ""),
                    "plug it into a USB 3 (blue) port; on USB 2 it is several times slower" if slow else None,
                )
            )
    pci = root / "sys/bus/pci/devices"
    for dev in sorted(pci.iterdir()) if pci.is_dir() else []:
        ids = (_read(dev / "vendor"), _read(dev / "device"))
        if ids in EDGETPU_PCI_IDS:
            found.append(Finding("edgetpu pci", OK, f"{EDGETPU_PCI_IDS[ids]} at PCI {dev.name}"))
    apex = sorted((root / "dev").glob("apex_*")) if (root / "dev").is_dir() else []
    for node in apex:
        found.append(Finding("edgetpu pci", OK, f"{node} (the apex driver is loaded)"))
    if any(f.check == "edgetpu pci" and "PCI" in f.detail for f in found) and not apex:
        found.append(
            Finding(
                "edgetpu pci",
                FAIL,
                "a Coral PCIe accelerator is present but /dev/apex_0 is missing: the gasket/apex driver is not loaded",
                "sudo apt-get install gasket-dkms libedgetpu1-std, then reboot (on a Pi 5 see the rpi5-coral-pcie "
                "profile's boot lines)",
            )
        )
    if not found:
        found.append(
            Finding("edgetpu", INFO, "no Edge TPU found (no Coral USB id, no Coral PCIe device, no /dev/apex_*)")
        )
    return found


def _cameras(root: Path) -> list[Finding]:
    nodes = (
        sorted((root / "dev").glob("video*"), key=lambda p: (len(p.name), p.name)) if (root / "dev").is_dir() else []
    )
    if not nodes:
        pi = is_raspberry_pi(root)
        fix = (
            "check the ribbon cable and camera_auto_detect=1 in /boot/firmware/config.txt; rpicam-hello --list-cameras"
            if pi
            else "plug in a USB camera; ls /dev/video* lists them"
        )
        return [Finding("camera", INFO, "no camera device (/dev/video*) found", fix)]
    findings = []
    for node in nodes:
        name = _read(root / "sys/class/video4linux" / node.name / "name")
        access = os.access(node, os.R_OK | os.W_OK)
        findings.append(
            Finding(
                "camera",
                OK if access else WARN,
                f"{node}" + (f" ({name})" if name else ""),
                None if access else "add your user to the video group: sudo usermod -aG video $USER, then log in again",
            )
        )
    return findings


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
