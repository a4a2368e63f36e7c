"""STAND-IN for picamera2.devices.IMX500 (see the package docstring): NOT the real library."""

from __future__ import annotations

import os
from enum import IntEnum
from typing import Any

import numpy as np
from standin_rpk import read_rpk

import picamera2 as _world

FW_NETWORK_STAGE = 2
SENSOR = (0, 0, 4056, 3040)  # IMX500.__get_full_sensor_resolution()


class NetworkIntrinsics:
    """The parts of picamera2's NetworkIntrinsics a classifier reads."""

    def __init__(self, val: dict[str, Any]) -> None:
        self._v = dict(val)

    @property
    def task(self) -> str | None:
        return self._v.get("task")

    @property
    def labels(self) -> list[str] | None:
        return self._v.get("classes", {}).get("labels")

    @property
    def softmax(self) -> bool | None:
        return self._v.get("cpu", {}).get("softmax")

    @property
    def inference_rate(self) -> float | None:
        return self._v.get("inference_rate")

    @property
    def preserve_aspect_ratio(self) -> bool | None:
        ar = self._v.get("input_aspect_ratio")
        return None if ar is None else ar["width"] == ar["height"]


class _DeviceNode:
    """The /dev/v4l-subdevN the real IMX500 keeps open (closed by __del__, or by a caller that wants it gone)."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class IMX500:
    class FwProgressType(IntEnum):
        NONE = 0
        DIRECT = 1
        INDIRECT = 2

    def __init__(self, network_file: str, camera_id: str = "") -> None:
        self.device_fd = None
        found = [
            c
            for c in _world.Picamera2.global_camera_info()
            if c["Model"] == "imx500" and (not camera_id or camera_id in c["Id"])
        ]
        if not found:
            raise RuntimeError("IMX500: Requested camera dev-node not found")
        self.__camera_num = found[0]["Num"]
        self.device_fd = _DeviceNode()
        path = os.path.abspath(network_file)
        if not os.path.isfile(path):
            raise RuntimeError(f"Firmware file {path} does not exist.")
        network = read_rpk(path)
        if network is None:
            raise RuntimeError(f"No matching footer found in firmware file {path}")
        if self.__camera_num in _world.OPEN:  # the ioctl that hands the firmware to the sensor
            raise RuntimeError(f"IMX500: Unable to set network firmware {path}: [Errno 16] Device or resource busy")
        _world.event(f"IMX500({os.path.basename(path)}) -> camera {self.__camera_num}")
        _world.NETWORKS[self.__camera_num] = network
        self.network = network
        self.fw_progress = (
            IMX500.FwProgressType.DIRECT if network["progress"] == "direct" else IMX500.FwProgressType.NONE
        )
        if self.fw_progress == IMX500.FwProgressType.NONE:
            print("IMX500 firmware update progress bar is not available")  # as picamera2 does, on stdout
        self.config: dict[str, Any] = {"network_file": network_file, "input_tensor": {}}
        if network.get("input_size"):
            w, h = network["input_size"]
            self.config["input_tensor"].update(width=w, height=h)
            self.config["input_tensor_size"] = (w, h)
        intrinsics = network.get("intrinsics")
        self.__intrinsics = NetworkIntrinsics(intrinsics) if intrinsics is not None else None
        self.set_inference_roi_abs(SENSOR)

    @property
    def camera_num(self) -> int:
        return self.__camera_num

    @property
    def network_intrinsics(self) -> NetworkIntrinsics | None:
        return self.__intrinsics

    def get_input_size(self) -> tuple[int, int]:
        return self.config["input_tensor_size"]  # KeyError without network_info.txt, as in picamera2

    def get_outputs(self, metadata: dict, add_batch: bool = False) -> list[np.ndarray] | None:
        output_tensor = metadata.get("CnnOutputTensor")
        if not output_tensor:
            return None
        flat = np.fromiter(output_tensor, dtype=np.float32)
        outputs, offset = [], 0
        for shape in self.get_output_shapes(metadata):
            size = int(np.prod(shape))
            tensor = flat[offset : offset + size].reshape(shape, order="F")
            outputs.append(np.expand_dims(tensor, 0) if add_batch else tensor)
            offset += size
        return outputs

    def get_output_shapes(self, metadata: dict) -> list[list[int]]:
        info = metadata.get("CnnOutputTensorInfo")
        return [list(s) for s in info["shapes"]] if info else []

    @staticmethod
    def get_kpi_info(metadata: dict) -> tuple[float, float] | None:
        kpi = metadata.get("CnnKpiInfo")
        if kpi is None:
            return None
        return kpi[0] / 1000, kpi[1] / 1000

    def get_fw_upload_progress(self, stage_req: int) -> tuple[int, int]:
        assert self.fw_progress != IMX500.FwProgressType.NONE  # picamera2 asserts this too
        if stage_req != FW_NETWORK_STAGE:
            return (0, 0)
        total = int(self.network["firmware_bytes"])
        frames = _world.PROGRESS.get(self.__camera_num, 0)
        ready = max(1, self.network["not_ready_frames"])
        return (min(total, total * frames // ready), total)

    def set_inference_roi_abs(self, roi: tuple) -> None:
        x, y, w, h = (int(v) for v in roi)
        x, y = max(0, x), max(0, y)
        w, h = min(w, SENSOR[2] - x), min(h, SENSOR[3] - y)  # Rectangle.bounded_to(full sensor)
        if self.device_fd is None or self.device_fd.closed:
            print("IMX500: Unable to set ROI control in the device driver: [Errno 9] Bad file descriptor")
            return
        self.config["roi"] = (x, y, w, h)
        _world.event(f"roi{self.config['roi']}")

    def set_inference_aspect_ratio(self, aspect_ratio: tuple) -> None:
        aw, ah = aspect_ratio
        sw, sh = SENSOR[2], SENSOR[3]
        # libcamera Size.bounded_to_aspect_ratio, then centred on the sensor
        if sw * ah > sh * aw:
            w, h = sh * aw // ah, sh
        else:
            w, h = sw, sw * ah // aw
        self.set_inference_roi_abs(((sw - w) // 2, (sh - h) // 2, w, h))

    def set_auto_aspect_ratio(self) -> None:
        self.set_inference_aspect_ratio(self.config["input_tensor_size"])

    def show_network_fw_progress_bar(self) -> None:
        _world.event("show_network_fw_progress_bar")

    def __del__(self) -> None:
        if self.device_fd:
            self.device_fd.close()
