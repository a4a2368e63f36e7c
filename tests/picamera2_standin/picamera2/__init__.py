"""STAND-IN for picamera2 with an AI Camera (Sony IMX500) attached: NOT the real library.

Put ``tests/picamera2_standin`` on sys.path (PYTHONPATH for a command) and ``from picamera2 import Picamera2`` and
``from picamera2.devices import IMX500`` give these classes. They answer the calls a program makes the way
picamera2 0.3.x does where it matters (read against raspberrypi/picamera2: picamera2/picamera2.py,
picamera2/request.py and picamera2/devices/imx500/imx500.py), so that tests catch misuse:

- the network is picked up by a camera only when ``IMX500(rpk)`` was made *before* ``Picamera2(camera_num)``:
  a camera opened without it streams frames that never carry outputs, and an IMX500 made while its camera is open
  fails as the real ioctl does (EBUSY);
- ``Picamera2(n)`` takes the camera ``n`` of `CAMERAS` (IndexError past the end), once (a second one is busy); the
  IMX500 is at its own number (``camera_num``), which need not be 0;
- ``capture_request`` needs a started camera and gives a request that must be released: with ``buffer_count``
  requests held, no frame comes (TimeoutError after ``wait`` s, as picamera2's Job does);
- each request's metadata holds ``CnnOutputTensor`` (dequantised floats), ``CnnOutputTensorInfo`` and
  ``CnnKpiInfo`` only once the network runs (``not_ready_frames`` after each start, then every ``every`` frames):
  ``IMX500.get_outputs`` is None before; ``get_kpi_info`` gives (dnn_ms, dsp_ms) from microseconds;
- picamera2 prints to stdout (it does when the firmware progress cannot be read, and when the ROI cannot be set).

The network comes from the stand-in .rpk (see standin_rpk.py). `EVENTS` records the calls in order; `STALLS`
makes a camera stop delivering frames after that many (a loose ribbon cable), one camera per entry.
Environment: PICAMERA2_STANDIN_CAMERAS="imx708,imx500" lists the attached sensors (default: one imx500);
PICAMERA2_STANDIN_EVENTS=FILE appends each event to FILE too (for a test that runs a command).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np

STANDIN = True
_LOCK = threading.Lock()


def _cameras_from_env() -> list[dict[str, Any]]:
    models = [m.strip() for m in os.environ.get("PICAMERA2_STANDIN_CAMERAS", "imx500").split(",") if m.strip()]
    return [
        {
            "Model": m,
            "Num": n,
            "Id": f"/base/axi/pcie@120000/rp1/i2c@{80000 + n * 8000}/{m}@1a",
            "Location": 2,
            "Rotation": 0,
        }
        for n, m in enumerate(models)
    ]


CAMERAS: list[dict[str, Any]] = _cameras_from_env()
EVENTS: list[str] = []
NETWORKS: dict[int, dict[str, Any]] = {}  # the network each camera's sensor was given (IMX500 made)
OPEN: dict[int, Picamera2] = {}  # the cameras acquired
PROGRESS: dict[int, int] = {}  # frames a camera has streamed since it started (drives the firmware "upload")
STALLS: list[int] = []  # the next camera to reach STALLS[0] frames stops delivering them


def reset() -> None:
    """Forget every camera, network and event (for tests)."""
    with _LOCK:
        CAMERAS[:] = _cameras_from_env()
        EVENTS.clear()
        NETWORKS.clear()
        OPEN.clear()
        PROGRESS.clear()
        STALLS.clear()


def event(text: str) -> None:
    with _LOCK:
        EVENTS.append(text)
        if os.environ.get("PICAMERA2_STANDIN_EVENTS"):
            with open(os.environ["PICAMERA2_STANDIN_EVENTS"], "a", encoding="utf-8") as f:
                f.write(text + "\n")


_FORMATS = {"RGB888": 3, "BGR888": 3, "XRGB8888": 4, "XBGR8888": 4, "YUV420": 1}
_CONFIG_KEYS = {
    "main",
    "lores",
    "raw",
    "transform",
    "colour_space",
    "buffer_count",
    "controls",
    "display",
    "encode",
    "sensor",
    "queue",
    "use_case",
}


class CompletedRequest:
    """One frame's buffers and metadata, held until `release` (picamera2.request.CompletedRequest)."""

    def __init__(self, camera: Picamera2, index: int, metadata: dict[str, Any]) -> None:
        self.picam2, self._index, self._metadata, self._released = camera, index, metadata, False

    def get_metadata(self) -> dict[str, Any]:
        self._check()
        return dict(self._metadata)

    def make_array(self, name: str) -> np.ndarray:
        self._check()
        stream = self.picam2.config.get(name) if self.picam2.config else None
        if not stream:
            raise KeyError(name)
        w, h = stream["size"]
        channels = _FORMATS[stream["format"]]
        return np.full((h, w, channels), self._index % 256, np.uint8)

    def release(self) -> None:
        if self._released:
            raise RuntimeError("stand-in: request released twice")
        self._released = True
        self.picam2._held -= 1

    def _check(self) -> None:
        if self._released:
            raise RuntimeError("stand-in: request used after release()")


class Picamera2:
    """picamera2.Picamera2 for the stand-in's sensors."""

    platform = "PISP"

    def __init__(self, camera_num: int = 0, **_: Any) -> None:
        cameras = self.global_camera_info()
        camera_num = int(camera_num)
        info = cameras[camera_num]  # IndexError: list index out of range, as picamera2 gives
        with _LOCK:
            if camera_num in OPEN:
                raise RuntimeError("Failed to acquire camera: Device or resource busy")
            OPEN[camera_num] = self
        event(f"Picamera2({camera_num})")
        self.camera_num, self.model = camera_num, info["Model"]
        # the firmware the sensor holds now is what it runs: given later (to a busy camera) it never arrives
        self.network = NETWORKS.get(camera_num) if self.model == "imx500" else None
        self.config: dict[str, Any] | None = None
        self.started = self.closed = self.stalled = False
        self._held = 0
        self._frames = 0
        self._cancel = threading.Event()

    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        return [dict(c) for c in CAMERAS]

    def create_preview_configuration(
        self,
        main: dict | None = None,
        lores: dict | None = None,
        raw: dict | None = None,
        transform: Any = None,
        colour_space: Any = None,
        buffer_count: int = 4,
        controls: dict | None = None,
        display: str = "main",
        encode: str = "main",
        sensor: dict | None = None,
        queue: bool = True,
    ) -> dict[str, Any]:
        self._alive()
        main = {"format": "XBGR8888", "size": (640, 480), **(main or {})}
        return {
            "use_case": "preview",
            "main": main,
            "lores": lores,
            "raw": raw,
            "buffer_count": buffer_count,
            "controls": dict(controls or {}),
            "queue": queue,
            "sensor": sensor,
            "colour_space": colour_space,
            "transform": transform,
            "display": display,
            "encode": encode,
        }

    def configure(self, config: dict[str, Any]) -> None:
        self._alive()
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        bad = sorted(set(config) - _CONFIG_KEYS)
        if bad:
            raise ValueError(f"Bad key {bad[0]!r}: valid configuration keys are {sorted(_CONFIG_KEYS)}")
        fmt = config["main"]["format"]
        if fmt not in _FORMATS or fmt == "YUV420":
            raise RuntimeError(f"stand-in: main format {fmt} is not one of the RGB formats")
        event(
            f"configure(main={tuple(config['main']['size'])} {fmt}, buffers={config['buffer_count']}, "
            f"controls={config['controls']})"
        )
        self.config = config

    def camera_configuration(self) -> dict[str, Any] | None:
        return self.config

    def start(self, config: dict[str, Any] | None = None, show_preview: bool = False) -> None:
        self._alive()
        if config is not None:
            self.configure(config)
        if self.config is None:
            raise RuntimeError("Camera has not been configured")
        event(f"start({self.camera_num})")
        self.started, self._frames = True, 0
        PROGRESS[self.camera_num] = 0

    def capture_request(self, wait: Any = None, signal_function: Any = None, flush: Any = None) -> CompletedRequest:
        self._alive()
        timeout = None if wait in (None, True) else float(wait)
        with _LOCK:
            if STALLS and self._frames >= STALLS[0]:
                STALLS.pop(0)
                self.stalled = True
        if not self.started or self.stalled or self._held >= self.config["buffer_count"]:  # type: ignore[index]
            # no frame comes: the camera is stopped or stalled, or the program holds every buffer
            if self._cancel.wait(timeout if timeout is not None else 3600):
                raise RuntimeError("stand-in: capture cancelled")
            raise TimeoutError()
        rate = float(self.config["controls"].get("FrameRate") or 30.0)  # type: ignore[index]
        time.sleep(min(1.0 / rate, 0.05))
        index = self._frames
        self._frames += 1
        PROGRESS[self.camera_num] = self._frames
        self._held += 1
        return CompletedRequest(self, index, self._metadata(index))

    def _metadata(self, index: int) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "SensorTimestamp": time.monotonic_ns(),
            "ScalerCrop": (0, 0, 4056, 3040),
            "FrameDuration": 33333,
        }
        net = self.network
        if net is None or index < net["not_ready_frames"] or (index - net["not_ready_frames"]) % net["every"]:
            return metadata
        n = (index - net["not_ready_frames"]) // net["every"]
        raw = np.asarray(net["outputs"][n % len(net["outputs"])], dtype=np.float64)
        tensors = [net["scale"] * (raw - net["zero_point"])] + [
            np.zeros(4 * (k + 1)) for k in range(net["extra_tensors"])
        ]
        metadata["CnnOutputTensor"] = [float(v) for t in tensors for v in t]
        metadata["CnnOutputTensorInfo"] = {"network_name": "standin", "shapes": [[len(t)] for t in tensors]}
        if net["kpi_us"] is not None:
            metadata["CnnKpiInfo"] = list(net["kpi_us"])
        return metadata

    def cancel_all_and_flush(self) -> None:
        self._cancel.set()
        self._cancel = threading.Event()

    def stop(self) -> None:
        self._alive()
        event(f"stop({self.camera_num})")
        self.started = False

    def close(self) -> None:
        if self.closed:
            return
        event(f"close({self.camera_num})")
        self.started, self.closed = False, True
        with _LOCK:
            if OPEN.get(self.camera_num) is self:
                del OPEN[self.camera_num]

    def _alive(self) -> None:
        if self.closed:
            raise RuntimeError("stand-in: this Picamera2 was closed")

    def __enter__(self) -> Picamera2:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
