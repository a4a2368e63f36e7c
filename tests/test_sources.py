"""Frame sources: OpenCV on a real video file, images, demo, --source parsing, clear errors, and the picamera2
adapter against a stand-in object that records picamera2's documented calls."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import write_video
from edgecls.errors import CameraError, ConfigError
from edgecls.preprocess import InputSpec, Preprocessor
from edgecls.sources import (
    DemoSource,
    ImageFilesSource,
    OpenCVSource,
    PicameraSource,
    lores_size_for,
    parse_source,
)

cv2 = pytest.importorskip("cv2")


def test_opencv_reads_every_frame_of_a_video_file_in_bgr(tmp_path):
    frames = [np.full((48, 64, 3), (i * 10, 0, 255 - i * 10), np.uint8) for i in range(10)]
    path = write_video(tmp_path / "clip.avi", frames)
    source = OpenCVSource(str(path))
    assert source.color == "bgr" and not source.live
    with source:
        got = []
        while (frame := source.read()) is not None:
            got.append(frame)
        assert source.describe()["width"] == 64
    assert len(got) == 10
    assert got[0].shape == (48, 64, 3)
    assert abs(int(got[0][..., 2].mean()) - 255) < 12 and abs(int(got[9][..., 0].mean()) - 90) < 12  # BGR order


def test_opencv_file_rewinds_for_loop(tmp_path):
    path = write_video(tmp_path / "clip.avi", [np.zeros((16, 16, 3), np.uint8)] * 3)
    with OpenCVSource(str(path)) as source:
        for _ in range(3):
            assert source.read() is not None
        assert source.read() is None
        assert source.rewind()
        assert source.read() is not None


@pytest.mark.parametrize(
    "spec, message",
    [
        ("/dev/video99", "camera /dev/video99 not found"),
        ("99", "cannot open camera 99"),
        ("rtsp://127.0.0.1:9/stream", "cannot open stream rtsp://127.0.0.1:9/stream"),
        ("missing.mp4", "video file not found"),
        ("videotestsrc ! appsink", "GStreamer"),
    ],
)
def test_missing_devices_and_bad_urls_are_one_clear_camera_error(spec, message):
    source = parse_source(spec)
    with pytest.raises(CameraError, match=message) as info:
        source.open()
    assert "\n" not in str(info.value)


def test_a_corrupt_video_file_is_a_camera_error(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x01 not a video" * 100)
    with pytest.raises(CameraError, match="cannot decode video file"):
        OpenCVSource(str(bad)).open()


def test_parse_source_forms(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    assert isinstance(parse_source("demo"), DemoSource)
    assert parse_source("demo:0").live is False
    assert parse_source("0").kind == "device" and parse_source("/dev/video2").live
    assert parse_source("http://cam.local/video.mjpg").kind == "network"
    assert parse_source(str(tmp_path)).__class__ is ImageFilesSource
    assert parse_source(str(tmp_path / "*.png")).__class__ is ImageFilesSource
    picam = parse_source("picam:1", model_size=(224, 224))
    assert isinstance(picam, PicameraSource) and picam.camera_num == 1 and picam.lores_size == (300, 224)
    with pytest.raises(CameraError, match="no such file, device or source"):
        parse_source(str(tmp_path / "nothing-here"))
    with pytest.raises(ConfigError, match="demo fps must be a number"):
        parse_source("demo:fast")


def test_image_files_source_yields_rgb_and_skips_nothing_silently(coral, tmp_path):
    source = ImageFilesSource([str(coral / "cat.bmp"), str(coral / "owl.jpg")])
    with source:
        first, second, end = source.read(), source.read(), source.read()
    assert first.shape[2] == 3 and second is not None and end is None
    with pytest.raises(CameraError, match="no image files found"):
        ImageFilesSource([str(tmp_path / "*.jpg")]).open()


def test_demo_source_is_paced_like_a_camera():
    import time

    with DemoSource(fps=50) as source:
        start = time.monotonic()
        frames = [source.read() for _ in range(6)]
        elapsed = time.monotonic() - start
    assert all(f.shape == (480, 640, 3) for f in frames)
    assert elapsed >= 0.08  # 5 intervals of 20 ms
    assert source.label in ("circle", "square", "triangle", "star", "stripes")


def test_lores_size_keeps_the_sensor_aspect_and_covers_the_model():
    assert lores_size_for((224, 224), (1280, 960)) == (300, 224)
    assert lores_size_for((96, 96), (1920, 1080)) == (172, 96)
    w, h = lores_size_for((300, 200), (640, 480))
    assert w >= 300 and h >= 200 and w % 2 == 0 and h % 2 == 0


# -- picamera2 --------------------------------------------------------------------------------------------------------


class Picamera2StandIn:
    """A stand-in for picamera2.Picamera2 (which needs a Raspberry Pi): it records the documented calls the adapter
    makes and returns lores frames in the layout picamera2 documents for each format."""

    instances: list["Picamera2StandIn"] = []

    def __init__(self, camera_num: int = 0) -> None:
        self.camera_num = camera_num
        self.calls: list[str] = []
        self.sensor_modes = [{"size": (1332, 990), "bit_depth": 10}, {"size": (2028, 1520), "bit_depth": 12}]
        self.config: dict | None = None
        Picamera2StandIn.instances.append(self)

    def create_video_configuration(self, main=None, lores=None, buffer_count=6, queue=True, sensor=None, controls=None):
        self.calls.append("create_video_configuration")
        return {"main": dict(main), "lores": dict(lores), "buffer_count": buffer_count, "queue": queue,
                "sensor": sensor, "controls": controls}

    def align_configuration(self, config):
        self.calls.append("align_configuration")

    def configure(self, config):
        self.calls.append("configure")
        self.config = config

    def start(self):
        self.calls.append("start")

    def capture_array(self, name="main"):
        self.calls.append(f"capture_array:{name}")
        w, h = self.config[name]["size"]
        fmt = self.config[name]["format"]
        if fmt == "YUV420":  # I420: Y plane (h rows), then U and V planes packed two rows per array row
            frame = np.full((h * 3 // 2, w), 128, np.uint8)
            frame[:h] = 200
            return frame
        pixel = {"RGB888": (10, 20, 250), "BGR888": (250, 20, 10)}[fmt]  # both are the colour (R=250, G=20, B=10)
        return np.broadcast_to(np.array(pixel, np.uint8), (h, w, 3)).copy()

    def stop(self):
        self.calls.append("stop")

    def close(self):
        self.calls.append("close")


@pytest.mark.parametrize("fmt, color", [("YUV420", "yuv420"), ("RGB888", "bgr"), ("BGR888", "rgb")])
def test_picamera_adapter_uses_a_two_stream_configuration(fmt, color):
    source = PicameraSource(0, lores_size=(300, 224), lores_format=fmt, main_size=(1280, 960), buffer_count=6,
                            sensor_mode=0, camera_factory=Picamera2StandIn)
    assert source.color == color and source.live
    with source:
        frame = source.read()
        cam = Picamera2StandIn.instances[-1]
        config = source.configuration
    assert cam.calls == ["create_video_configuration", "align_configuration", "configure", "start",
                         "capture_array:lores", "stop", "close"]
    assert config["lores"] == {"size": (300, 224), "format": fmt}
    assert config["main"] == {"size": (1280, 960), "format": "XRGB8888"}
    assert config["buffer_count"] == 6 and config["queue"] is False
    assert config["sensor"] == {"output_size": (1332, 990), "bit_depth": 10}
    # the shared preprocessing turns what the format delivers into the same RGB pixels
    rgb = Preprocessor(InputSpec(8, 8, 3, "uint8", 1 / 255, 0)).to_array(frame, color=color)
    if fmt == "YUV420":
        assert np.all(np.abs(rgb.astype(int) - rgb[0, 0].astype(int)) <= 1)  # grey: equal channels
        assert abs(int(rgb[0, 0, 0]) - int(rgb[0, 0, 2])) <= 2
    else:
        assert tuple(rgb[0, 0]) == (250, 20, 10)


def test_picamera_yuv_gives_a_grayscale_model_the_y_plane():
    source = PicameraSource(0, lores_size=(64, 48), main_size=(640, 480), camera_factory=Picamera2StandIn)
    with source:
        frame = source.read()
    gray = Preprocessor(InputSpec(8, 8, 1, "uint8", 1 / 255, 0)).to_array(frame, color="yuv420")
    assert np.all(gray == 200)


def test_picamera_missing_is_explained(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_picamera2(name, *args, **kwargs):
        if name == "picamera2":
            raise ImportError("No module named 'picamera2'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_picamera2)
    with pytest.raises(CameraError, match="python3-picamera2.*system-site-packages"):
        PicameraSource(0).open()


def test_picamera_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="format 'MJPEG'"):
        PicameraSource(0, lores_format="MJPEG")
    with pytest.raises(ConfigError, match="must not be larger"):
        PicameraSource(0, lores_size=(2000, 2000), main_size=(640, 480))
    with pytest.raises(ConfigError, match="sensor mode 5 does not exist"):
        PicameraSource(0, sensor_mode=5, camera_factory=Picamera2StandIn).open()
