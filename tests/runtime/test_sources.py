"""Frame sources: OpenCV on a real video file, images, demo, --source parsing, clear errors, and the picamera2
adapter against a stand-in object that records picamera2's documented calls."""

from __future__ import annotations

import concurrent.futures
import re
import threading
import time
from typing import ClassVar

import numpy as np
import pytest
from conftest import needs_opencv, write_video

from edgecls.errors import CameraError, ConfigError
from edgecls.live.sources import (
    DemoSource,
    ImageFilesSource,
    OpenCVSource,
    PicameraSource,
    lores_size_for,
    parse_source,
)
from edgecls.model.preprocess import InputSpec, Preprocessor

# (tests that need OpenCV are marked needs_opencv)


@needs_opencv
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


@needs_opencv
def test_opencv_file_rewinds_for_loop(tmp_path):
    path = write_video(tmp_path / "clip.avi", [np.zeros((16, 16, 3), np.uint8)] * 3)
    with OpenCVSource(str(path)) as source:
        for _ in range(3):
            assert source.read() is not None
        assert source.read() is None
        assert source.rewind()
        assert source.read() is not None


@needs_opencv
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


@needs_opencv
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
    """A stand-in for picamera2.Picamera2 (which needs a Raspberry Pi) that behaves as the real one does where it
    matters (read against picamera2's source): `align_configuration` rounds widths *down* (YUV420 to 64 px on a
    Pi 4, 128 on a Pi 5); configure fails on a 0-wide stream and fills in the stride (YUV420 rows padded to a
    multiple of 128 bytes here) and the colour space (Rec.709 for main >= 1280x720 unless one is asked for);
    `capture_array` blocks while the camera is stalled (raising TimeoutError after ``wait`` s); `stop()` behind a
    pending capture deadlocks (here: raises) unless `cancel_all_and_flush()` came first; the constructor can fail.
    Frames are in the layout picamera2 documents for each format, YUV420 with the stride padding kept."""

    instances: ClassVar[list[Picamera2StandIn]] = []
    platform = "PISP"  # a Pi 5
    stalled = False  # set on the class: captures then block
    fail_constructor: Exception | None = None
    yuv = (200, 128, 128)  # the Y, U, V of every YUV420 pixel

    def __init__(self, camera_num: int = 0) -> None:
        if Picamera2StandIn.fail_constructor is not None:
            raise Picamera2StandIn.fail_constructor
        self.camera_num = camera_num
        self.calls: list[str] = []
        self.sensor_modes = [{"size": (1332, 990), "bit_depth": 10}, {"size": (2028, 1520), "bit_depth": 12}]
        self.config: dict | None = None
        self._pending = 0
        self._cancel = threading.Event()
        Picamera2StandIn.instances.append(self)

    def create_video_configuration(
        self, main=None, lores=None, buffer_count=6, queue=True, sensor=None, controls=None, colour_space=None
    ):
        self.calls.append("create_video_configuration")
        return {
            "main": dict(main),
            "lores": dict(lores),
            "buffer_count": buffer_count,
            "queue": queue,
            "sensor": sensor,
            "controls": controls,
            "colour_space": colour_space,
        }

    def align_configuration(self, config):
        self.calls.append("align_configuration")
        for name in ("main", "lores"):
            stream = config[name]
            align = 32 if self.platform == "VC4" else 64
            if stream["format"] == "YUV420":
                align *= 2
            elif stream["format"] in ("XBGR8888", "XRGB8888"):
                align //= 2
            w, h = stream["size"]
            stream["size"] = (w - w % align, h - h % 2)

    def configure(self, config):
        self.calls.append("configure")
        for name in ("main", "lores"):
            w, h = config[name]["size"]
            if w <= 0 or h <= 0:
                raise RuntimeError(f"Failed to configure: {name} stream of size {w}x{h}")
            bpp = {"YUV420": 1, "RGB888": 3, "BGR888": 3}.get(config[name]["format"], 4)
            config[name]["stride"] = -(-w * bpp // 128) * 128 if config[name]["format"] == "YUV420" else w * bpp
        if config["colour_space"] is None:
            mw, mh = config["main"]["size"]
            config["colour_space"] = "Rec709" if mw >= 1280 and mh >= 720 else "Smpte170m"
        self.config = config

    def camera_configuration(self):
        return self.config

    def start(self):
        self.calls.append("start")

    def capture_array(self, name="main", wait=None):
        self.calls.append(f"capture_array:{name}")
        if Picamera2StandIn.stalled:
            self._pending += 1
            if not self._cancel.wait(None if wait in (None, True) else wait):
                raise concurrent.futures.TimeoutError()
            raise concurrent.futures.CancelledError()
        w, h = self.config[name]["size"]
        stride = self.config[name]["stride"]
        fmt = self.config[name]["format"]
        if fmt == "YUV420":  # I420 with padded rows: Y (h rows of stride), then U and V (h/2 rows of stride/2 each)
            y, u, v = self.yuv
            flat = np.zeros(stride * h * 3 // 2, np.uint8)  # padding bytes are 0: an uncropped frame shows them
            flat[: stride * h].reshape(h, stride)[:, :w] = y
            half = (stride // 2) * (h // 2)
            flat[stride * h : stride * h + half].reshape(h // 2, stride // 2)[:, : w // 2] = u
            flat[stride * h + half :].reshape(h // 2, stride // 2)[:, : w // 2] = v
            return flat.reshape(h * 3 // 2, stride)
        pixel = {"RGB888": (10, 20, 250), "BGR888": (250, 20, 10)}[fmt]  # both are the colour (R=250, G=20, B=10)
        return np.broadcast_to(np.array(pixel, np.uint8), (h, w, 3)).copy()

    def cancel_all_and_flush(self):
        self.calls.append("cancel_all_and_flush")
        self._pending = 0
        self._cancel.set()

    def stop(self):
        self.calls.append("stop")
        if self._pending:
            raise AssertionError("stop() behind a pending capture: the real picamera2 deadlocks here")

    def close(self):
        self.calls.append("close")


@pytest.fixture(autouse=True)
def _standin_defaults():
    yield
    Picamera2StandIn.stalled = False
    Picamera2StandIn.fail_constructor = None
    Picamera2StandIn.platform = "PISP"
    Picamera2StandIn.yuv = (200, 128, 128)


@pytest.mark.parametrize(
    "fmt, color, lores", [("YUV420", "rgb", (384, 288)), ("RGB888", "bgr", (320, 240)), ("BGR888", "rgb", (320, 240))]
)
def test_picamera_adapter_uses_a_two_stream_configuration(fmt, color, lores):
    source = PicameraSource(
        0,
        lores_size=(300, 224),
        lores_format=fmt,
        main_size=(1280, 960),
        buffer_count=6,
        sensor_mode=0,
        camera_factory=Picamera2StandIn,
    )
    assert source.live
    with source:
        frame = source.read()
        cam = Picamera2StandIn.instances[-1]
        config = source.configuration
        assert source.color == color  # YUV at main 1280x960 is Rec.709: converted here with that matrix, to RGB
    assert cam.calls == [
        "create_video_configuration",
        "align_configuration",
        "configure",
        "start",
        "capture_array:lores",
        "cancel_all_and_flush",
        "stop",
        "close",
    ]
    # the width rounded *up* to the Pi 5's alignment, the height following main's 4:3
    assert config["lores"]["size"] == lores and config["lores"]["format"] == fmt
    assert config["main"]["size"] == (1280, 960) and config["main"]["format"] == "XRGB8888"
    assert config["buffer_count"] == 6 and config["queue"] is False
    assert config["sensor"] == {"output_size": (1332, 990), "bit_depth": 10}
    assert frame.shape[:2] == (lores[1], lores[0])
    # the shared preprocessing turns what the format delivers into the same RGB pixels
    rgb = Preprocessor(InputSpec(8, 8, 3, "uint8", 1 / 255, 0)).to_array(frame, color=source.color)
    if fmt == "YUV420":
        assert np.all(np.abs(rgb.astype(int) - rgb[0, 0].astype(int)) <= 1)  # grey: equal channels
        assert abs(int(rgb[0, 0, 0]) - int(rgb[0, 0, 2])) <= 2
    else:
        assert tuple(rgb[0, 0]) == (250, 20, 10)


@pytest.mark.parametrize(
    "platform, fmt, model, main, want",
    [
        ("VC4", "YUV420", (224, 224), (1280, 960), (320, 240)),  # picamera2 alone: 256x224, a 14% squeeze
        ("PISP", "YUV420", (32, 32), (1280, 960), (128, 96)),  # picamera2 alone: width 0, configure fails
        ("PISP", "RGB888", (96, 96), (1536, 864), (192, 108)),
        ("VC4", "RGB888", (224, 224), (640, 480), (320, 240)),
    ],
)
def test_picamera_lores_is_aligned_up_keeping_the_aspect_ratio(platform, fmt, model, main, want):
    from edgecls.live.sources import lores_size_for

    Picamera2StandIn.platform = platform
    source = PicameraSource(
        0, lores_size=lores_size_for(model, main), lores_format=fmt, main_size=main, camera_factory=Picamera2StandIn
    )
    with source:
        frame = source.read()
    w, h = source.configuration["lores"]["size"]
    assert (w, h) == want and w >= model[0] and h >= model[1]
    assert abs(w / h - main[0] / main[1]) < 0.02 * main[0] / main[1]
    assert frame.shape[:2] == (h, w)


@needs_opencv
def test_picamera_yuv_stride_padding_is_cropped():
    """On a Pi 4 a 64-px YUV420 lores has 128-byte rows: the padding (0 here) must not reach the model."""
    Picamera2StandIn.platform = "VC4"
    source = PicameraSource(0, lores_size=(64, 48), main_size=(640, 480), camera_factory=Picamera2StandIn)
    with source:
        assert source.configuration["lores"]["stride"] == 128
        frame = source.read()
    assert frame.shape == (72, 64) and source.color == "yuv420"  # 640x480 is BT.601: the fast path stays
    gray = Preprocessor(InputSpec(8, 8, 1, "uint8", 1 / 255, 0)).to_array(frame, color="yuv420")
    assert np.all(gray == 200)
    rgb = Preprocessor(InputSpec(8, 8, 3, "uint8", 1 / 255, 0)).to_array(frame, color="yuv420")
    assert rgb.min() > 150  # a grey of Y=200 everywhere, no black padding columns


@needs_opencv
@pytest.mark.parametrize("main, green", [((1280, 960), 92), ((640, 480), 72)])
def test_picamera_yuv_uses_the_colour_matrix_the_camera_reports(main, green):
    """Y=128, U=128, V=200: BT.709 (what picamera2 picks for main >= 1280x720) gives G=92, BT.601 gives G=72."""
    Picamera2StandIn.yuv = (128, 128, 200)
    source = PicameraSource(0, lores_size=(128, 96), main_size=main, camera_factory=Picamera2StandIn)
    with source:
        frame = source.read()
    rgb = Preprocessor(InputSpec(8, 8, 3, "uint8", 1 / 255, 0)).to_array(frame, color=source.color)
    assert abs(int(rgb[4, 4, 1]) - green) <= 2, rgb[4, 4]


def test_a_stalled_picamera_times_out_and_the_stream_reopens_it():
    """Frames stop (a loose ribbon cable): the capture times out instead of hanging, the pending capture is
    cancelled before stop() (which would deadlock behind it), and the stream reopens the camera."""
    from edgecls.live.capture import Capture

    source = PicameraSource(
        0, lores_size=(128, 96), main_size=(640, 480), frame_timeout=0.1, camera_factory=Picamera2StandIn
    )
    source.open()
    source.read()  # the first frame
    Picamera2StandIn.stalled = True
    start = time.monotonic()
    with pytest.raises(CameraError, match="delivered no frame for 0.1 s"):
        source.read()
    assert time.monotonic() - start < 1.0
    source.close()  # no deadlock: cancel_all_and_flush came first
    assert Picamera2StandIn.instances[-1].calls[-3:] == ["cancel_all_and_flush", "stop", "close"]

    events = []
    capture = Capture(source, on_event=events.append, backoff=(0.05, 0.1))
    capture.start()
    try:
        deadline = time.monotonic() + 5
        while not any(e.kind == "source-lost" for e in events) and time.monotonic() < deadline:
            time.sleep(0.02)
        Picamera2StandIn.stalled = False  # the cable is back
        while not any(e.kind == "source-reopened" for e in events) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [e.kind for e in events][:1] == ["source-lost"] and "source-reopened" in [e.kind for e in events]
        assert capture.get(timeout=2) is not None
    finally:
        capture.stop()


def test_a_picamera_constructor_failure_is_one_camera_error():
    Picamera2StandIn.fail_constructor = RuntimeError("Camera __init__ sequence did not complete.")
    with pytest.raises(CameraError, match="cannot open Raspberry Pi camera 0 .*did not complete.*ribbon cable"):
        PicameraSource(0, camera_factory=Picamera2StandIn).open()


def test_picamera2_failing_to_import_names_the_numpy_fix(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name == "picamera2":
            raise ValueError(
                "numpy.dtype size changed, may indicate binary incompatibility. Expected 96 from C "
                "header, got 88 from PyObject"
            )
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken)
    with pytest.raises(CameraError, match="fails to import .*dtype size changed.*numpy=="):
        PicameraSource(0).open()


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


def test_a_source_config_is_checked_when_made_and_builds_the_source():
    """SourceConfig and PicameraOptions refuse a bad value when made, repeating it; parse_source takes the config
    (a text alone is a config with nothing else set)."""
    import dataclasses

    from edgecls.live.sources import PicameraOptions, SourceConfig

    for make, says in [
        (lambda: SourceConfig("0", width=8), "camera width must be an integer >= 16 (received 8)"),
        (lambda: SourceConfig("0", height=480.5), "camera height must be an integer >= 16 (received 480.5)"),
        (lambda: SourceConfig("0", fps=0), "camera fps must be a positive number (received 0)"),
        (lambda: SourceConfig(-1), "a camera index is 0 or more (received -1)"),
        (lambda: SourceConfig(["picam"]), "(received ['picam'])"),
        (lambda: SourceConfig("picam", picamera={"lores": 1}), "unknown picamera setting 'lores'"),
        (lambda: PicameraOptions(main_format="NV12"), "main_format must be one of YUV420"),
        (lambda: PicameraOptions(lores_size=(320,)), "lores_size must be (width, height)"),
        (lambda: PicameraOptions(buffer_count=1), "buffer_count must be an integer >= 2 (received 1)"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(says)):
            make()
    config = SourceConfig("picam:1", fps=15, picamera={"main_size": [1536, 864], "controls": {"ExposureTime": 9}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.fps = 30  # type: ignore[misc]
    picam = parse_source(config, model_size=(224, 224))
    assert isinstance(picam, PicameraSource) and picam.camera_num == 1 and picam.main_size == (1536, 864)
    assert picam.controls == {"FrameRate": 15.0, "ExposureTime": 9} and picam.lores_size == (398, 224)
    usb = parse_source(SourceConfig(2, width=640, height=480, fps=30))
    assert (usb.target, usb.width, usb.height, usb.fps) == (2, 640, 480, 30)
    assert parse_source(SourceConfig("demo", fps=5)).fps == 5
    with pytest.raises(ConfigError, match="no source given"):
        parse_source(SourceConfig())
