"""STAND-IN network files for the picamera2 stand-in beside this module: NOT Sony's or Raspberry Pi's format.

A real ``network.rpk`` (made by ``imx500-package`` on a Raspberry Pi) holds the network firmware and, in a CPIO
archive at its end, ``network_info.txt`` (input size) and ``network_intrinsics`` (task, labels, softmax, aspect
ratio). The stand-in's ``.rpk`` holds what the stand-in camera needs to behave like the sensor running a network:
the header line `MAGIC`, then JSON with

- ``input_size`` [width, height] (what network_info.txt gives; absent: picamera2's config lacks it too),
- ``intrinsics`` (picamera2's network_intrinsics JSON, or null),
- ``outputs``: raw uint8 score vectors, one per frame with outputs, used in turn; ``scale`` and ``zero_point``
  dequantise them as libcamera does before picamera2 sees them (the IMX500 converter's uint8 softmax: 1/256, 0),
- ``extra_tensors``: further output tensors (an object detector has several),
- ``not_ready_frames``: frames after each start before the network's first outputs (the firmware upload),
- ``every``: then outputs on every Nth frame only (an inference rate under the frame rate),
- ``kpi_us``: [dnn, dsp] run times in microseconds in each frame's CnnKpiInfo (null: none),
- ``progress``: whether the firmware upload's progress can be read ("direct") or not ("none", as for a user who
  may not read debugfs; picamera2 then prints that on stdout), ``firmware_bytes`` its size.

`package` is what the stand-in ``imx500-package`` of tests/emulated_pi.py runs: packerOut.zip -> network.rpk.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

MAGIC = b"EDGECLS STAND-IN RPK (not a real IMX500 network)\n"
PACKAGE_MEMBER = "standin_network.json"  # what a stand-in packerOut.zip holds

DEFAULTS: dict[str, Any] = {
    "input_size": [224, 224],
    "intrinsics": {"task": "classification"},
    "outputs": [[200, 30, 20, 6]],
    "scale": 1 / 256,
    "zero_point": 0,
    "extra_tensors": 0,
    "not_ready_frames": 3,
    "every": 1,
    "kpi_us": [5200, 1300],
    "progress": "direct",
    "firmware_bytes": 400 * 1024,
}


def network(**overrides: Any) -> dict[str, Any]:
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown stand-in network keys {sorted(unknown)}")
    return {**DEFAULTS, **overrides}


def write_rpk(path: str | os.PathLike[str], **overrides: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(MAGIC + json.dumps(network(**overrides)).encode())
    return path


def read_rpk(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The network in a stand-in .rpk, or None when the file is not one."""
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        return None
    return json.loads(data[len(MAGIC) :])


def write_package(path: str | os.PathLike[str], **overrides: Any) -> Path:
    """A stand-in packerOut.zip (the real one holds the converted network for imx500-package)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(PACKAGE_MEMBER, json.dumps(network(**overrides)))
    return path


def package(packer_out: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """packerOut.zip -> OUT/network.rpk, as ``imx500-package -i packerOut.zip -o OUT`` does on a Pi."""
    with zipfile.ZipFile(packer_out) as z:
        spec = json.loads(z.read(PACKAGE_MEMBER))
    return write_rpk(Path(out_dir) / "network.rpk", **spec)
