"""Frame sources: cameras (picamera2, OpenCV), video files, network streams, still images and the demo generator.

Every source says which colour order its frames come in (``color``: "rgb", "bgr" or "yuv420") and whether it is
``live`` (frames keep coming whether or not anyone reads them, so stale ones are dropped, and a failure is worth a
reconnect) or not (a file: every frame is read in turn, and the end is the end). The shared preprocessing converts
the colour once; sources never convert.

``open_source("picam")``, ``open_source("0")``, ``open_source("clip.mp4")`` ... build a source from the text a user
types after ``--source``; see `parse_source`.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from edgecls.errors import CameraError, ConfigError
from edgecls.model.images import IMAGE_SUFFIXES, expand_image_paths, read_image, yuv420_to_rgb, yuv_matrix
from edgecls.nativelog import quiet_native_stderr

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mjpeg", ".mjpg", ".mpg", ".mpeg", ".ts", ".h264")
NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
SOURCE_FORMS = (
    "picam | picam:N (Raspberry Pi camera), imx500 | imx500:RPK (the AI Camera, which runs the network itself), N or "
    "/dev/videoN (USB camera), a video file, an rtsp:// or http:// URL, a GStreamer pipeline ('... ! appsink'), an "
    "image, a folder or glob of images, or demo"
)
PICAMERA2_HINT = (
    "picamera2 comes from Raspberry Pi OS packages, not pip: sudo apt install python3-picamera2, and make the venv "
    "with system site packages (python3 -m venv --system-site-packages .venv)"
)


# What `FrameSource.frame_outputs` returns for a frame that came before the sensor's network had run: the stream
# skips such a frame, it is never classified.
NOT_READY = object()


class FrameSource:
    """Base class of frame sources. Subclasses set ``name``, ``color`` and ``live`` and implement the methods.

    ``read()`` returns the next uint8 frame, or None at the end of the stream; it raises CameraError when the
    device fails (a live source is then reopened by the stream with backoff) and ImageError for one bad item
    (skipped and reported). ``rewind()`` starts a finite source over (for ``--loop``).

    A sensor that runs the network itself (the AI Camera, `edgecls.live.imx500`) sets ``computes_outputs``: after each
    ``read()``, ``frame_outputs()`` gives what the network made of that frame, or NOT_READY. ``report(kind,
    message)``, set by the capture that runs the source, tells the stream's consumer of a slow step (a firmware
    upload).
    """

    name: str = "source"
    color: str = "rgb"
    live: bool = False
    computes_outputs: bool = False
    report: Callable[[str, str], None] | None = None

    def open(self) -> None:
        """Acquire the device or file; raises CameraError with the reason and the fix."""

    def read(self) -> np.ndarray | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def rewind(self) -> bool:
        """Start over from the first frame; False when the source cannot."""
        return False

    def close(self) -> None:
        """Release the device; safe to call twice."""

    def frame_outputs(self) -> Any:
        """What the source computed for the frame ``read()`` returned last (see ``computes_outputs``); None here."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "color": self.color, "live": self.live}

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- OpenCV: USB cameras, video files, network streams, GStreamer pipelines -----------------------------------------


class OpenCVSource(FrameSource):
    """A device index, ``/dev/videoN``, video file, network URL or GStreamer pipeline read with cv2.VideoCapture.

    ``width``/``height``/``fps`` are requested from cameras (the driver may pick the nearest mode it has).
    ``timeout_ms`` bounds how long opening or reading a network stream may block. Frames come in BGR order.
    """

    color = "bgr"

    def __init__(
        self,
        target: int | str,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        timeout_ms: int = 5000,
    ) -> None:
        self.target = target
        self.kind = _opencv_kind(target)
        self.live = self.kind != "file"
        self.name = f"{self.kind}:{target}"
        self.width, self.height, self.fps, self.timeout_ms = width, height, fps, timeout_ms
        self._cap: Any = None

    def open(self) -> None:
        cv2 = _import_cv2()
        if self.kind == "file" and not Path(str(self.target)).is_file():
            raise CameraError(f"video file not found: {self.target}")
        if self.kind == "device" and isinstance(self.target, str) and not Path(self.target).exists():
            raise CameraError(f"camera {self.target} not found; is it plugged in? (ls /dev/video* lists cameras)")
        if self.kind == "gstreamer" and not _has_gstreamer(cv2):
            raise CameraError(
                "this OpenCV build has no GStreamer support (pip wheels do not); install Debian's python3-opencv "
                "and use a venv with system site packages, or give a device, file or URL instead"
            )
        params: list[int] = []
        for prop, value in (
            (cv2.CAP_PROP_FRAME_WIDTH, self.width),
            (cv2.CAP_PROP_FRAME_HEIGHT, self.height),
            (cv2.CAP_PROP_FPS, self.fps),
        ):
            if value and self.kind == "device":
                params += [prop, int(value)]
        if self.kind == "network":
            params += [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.timeout_ms]
        api = {"gstreamer": cv2.CAP_GSTREAMER, "device": cv2.CAP_V4L2}.get(self.kind, cv2.CAP_ANY)
        _quiet_opencv(cv2)
        with quiet_native_stderr(replay=False) as said:  # FFmpeg and V4L2 print their own version of the failure
            cap = cv2.VideoCapture(self.target, api, params)
            opened = cap.isOpened()
        if not opened:
            cap.release()
            detail = f" [{said[-1].strip()}]" if said else ""
            raise CameraError(self._open_failure() + detail)
        for line in said:
            log.info("opencv: %s", line)
        if self.kind == "device":
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver keeps fewer stale frames when supported
        self._cap = cap

    def _open_failure(self) -> str:
        if self.kind == "device":
            return (
                f"cannot open camera {self.target}: no such device, or it is busy in another program "
                "(ls /dev/video* lists cameras; fuser /dev/video0 shows who holds one)"
            )
        if self.kind == "network":
            return (
                f"cannot open stream {self.target} within {self.timeout_ms} ms: check the address, the credentials "
                "and that the camera is reachable (ffprobe URL tells more)"
            )
        if self.kind == "gstreamer":
            return f"GStreamer could not start the pipeline {self.target!r}; it must end in appsink"
        return f"cannot decode video file {self.target}: corrupt, or a codec this OpenCV build lacks"

    def read(self) -> np.ndarray | None:
        if self._cap is None:
            raise CameraError(f"{self.name} is not open")
        ok, frame = self._cap.read()
        if ok and frame is not None:
            return frame
        if self.live:
            raise CameraError(f"{self.name} stopped delivering frames")
        return None

    def rewind(self) -> bool:
        if self.kind != "file" or self._cap is None:
            return False
        self.close()
        self.open()
        return True

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def describe(self) -> dict[str, Any]:
        facts = super().describe()
        if self._cap is not None:
            cv2 = _import_cv2()
            facts.update(
                width=int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                height=int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                fps=float(self._cap.get(cv2.CAP_PROP_FPS)),
            )
        return facts


def _opencv_kind(target: int | str) -> str:
    if isinstance(target, int) or re.fullmatch(r"/dev/video\d+", str(target)):
        return "device"
    text = str(target)
    if "!" in text:
        return "gstreamer"
    if re.match(rf"^({'|'.join(NETWORK_SCHEMES)})://", text, re.IGNORECASE):
        return "network"
    return "file"


def _has_gstreamer(cv2: Any) -> bool:
    match = re.search(r"GStreamer:\s*(\S+)", cv2.getBuildInformation())
    return bool(match and match.group(1).upper().startswith("YES"))


def _quiet_opencv(cv2: Any) -> None:
    """OpenCV warns on stderr for every failed open; our CameraError already says it, once."""
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:  # pragma: no cover - very old OpenCV
        pass


# -- Still images ---------------------------------------------------------------------------------------------------


class ImageFilesSource(FrameSource):
    """Image files (paths, folders, globs) as a finite stream of RGB frames, in sorted order."""

    color = "rgb"
    live = False

    def __init__(self, items: Sequence[str | os.PathLike[str]], *, grayscale: bool = False) -> None:
        self.items = [str(i) for i in items]
        self.name = "images:" + ",".join(self.items)
        self.grayscale = grayscale
        self.paths: list[Path] = []
        self._next = 0
        self.current: Path | None = None

    def open(self) -> None:
        # every item, readable or not: one that cannot be read is reported by name when its turn comes
        self.paths = list(expand_image_paths(self.items))
        if not any(os.path.lexists(p) for p in self.paths):
            raise CameraError(f"no image files found in {' '.join(self.items)} (expected {', '.join(IMAGE_SUFFIXES)})")
        self._next = 0

    def read(self) -> np.ndarray | None:
        if self._next >= len(self.paths):
            return None
        self.current = self.paths[self._next]
        self._next += 1
        return read_image(self.current, grayscale=self.grayscale)  # ImageError: skipped, reported by the stream

    def rewind(self) -> bool:
        self._next = 0
        return True


# -- Demo -----------------------------------------------------------------------------------------------------------


class DemoSource(FrameSource):
    """Synthetic 640x480 frames of the demo shapes at ``fps`` (0: as fast as they are asked for), like a camera."""

    color = "rgb"

    def __init__(self, *, fps: float = 30.0, seed: int = 0, width: int = 640, height: int = 480) -> None:
        self.fps, self.seed, self.width, self.height = fps, seed, width, height
        self.live = fps > 0
        self.name = "demo"
        self.label: str | None = None  # the class of the last frame read: ground truth for tests and demos
        self._frames: Iterator[tuple[str, np.ndarray]] | None = None
        self._next_at = 0.0

    def open(self) -> None:
        from edgecls.live.demo import demo_frames

        self._frames = demo_frames(height=self.height, width=self.width, seed=self.seed)
        self._next_at = time.monotonic()

    def read(self) -> np.ndarray | None:
        if self._frames is None:
            raise CameraError("demo source is not open")
        if self.fps > 0:
            delay = self._next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._next_at = max(self._next_at + 1.0 / self.fps, time.monotonic() - 1.0 / self.fps)
        self.label, frame = next(self._frames)
        return frame

    def close(self) -> None:
        self._frames = None


# -- picamera2 (Raspberry Pi cameras) -------------------------------------------------------------------------------

# What each picamera2 format really delivers, byte by byte (libcamera names formats by little-endian words):
# RGB888 is [B, G, R], BGR888 is [R, G, B], XRGB8888 is [B, G, R, 255], XBGR8888 is [R, G, B, 255], and YUV420 is
# an I420 array of shape (height * 3 / 2, width).
PICAMERA_FORMATS = {"YUV420": "yuv420", "RGB888": "bgr", "BGR888": "rgb", "XRGB8888": "bgr", "XBGR8888": "rgb"}


class PicameraSource(FrameSource):
    """A Raspberry Pi camera through picamera2, in a two-stream configuration.

    The small ``lores`` stream (``lores_format`` YUV420, which every Pi supports, or RGB888 on a Pi 5) is what the
    model sees; ``lores_size`` should be a little over the model's input with the sensor's aspect ratio (see
    `lores_size_for`). The ``main`` stream (``main_size``) is there for preview or recording. ``buffer_count``
    buffers keep the camera from dropping frames while one is being classified. ``camera_factory`` is the
    Picamera2 class; tests pass a stand-in.

    What picamera2 does not do for us, this does: the lores width is rounded *up* to the ISP's alignment (picamera2's
    `align_configuration` rounds down, which squeezes the picture or makes a narrow stream 0 px wide) with the
    height following main's aspect ratio, and the configuration is read back and checked; YUV420 rows are cropped
    to the width when the stride is wider; the YUV colour matrix is asked to be BT.601 (what the conversion uses) and,
    where the camera keeps another (Rec.709 for main >= 1280x720), frames are converted with the matrix it reports;
    and a capture that waits longer than ``frame_timeout`` s (a loose ribbon cable) is cancelled and reported, so the
    stream reopens the camera instead of hanging.
    """

    live = True

    def __init__(
        self,
        camera_num: int = 0,
        *,
        lores_size: tuple[int, int] = (320, 240),
        lores_format: str = "YUV420",
        main_size: tuple[int, int] = (1280, 960),
        main_format: str = "XRGB8888",
        buffer_count: int = 6,
        sensor_mode: int | None = None,
        controls: dict[str, Any] | None = None,
        frame_timeout: float | None = None,
        camera_factory: Callable[..., Any] | None = None,
    ) -> None:
        if lores_format not in PICAMERA_FORMATS or main_format not in PICAMERA_FORMATS:
            raise ConfigError(
                f"picamera2 format {lores_format if lores_format not in PICAMERA_FORMATS else main_format!r} is not "
                f"supported; expected one of {', '.join(PICAMERA_FORMATS)}"
            )
        if lores_size[0] > main_size[0] or lores_size[1] > main_size[1]:
            raise ConfigError(f"lores size {lores_size} must not be larger than main size {main_size}")
        if buffer_count < 2:
            raise ConfigError(f"buffer_count must be at least 2 (received {buffer_count})")
        self.camera_num = camera_num
        self.lores_size, self.lores_format = (_even(lores_size[0]), _even(lores_size[1])), lores_format
        self.main_size, self.main_format = main_size, main_format
        self.buffer_count, self.sensor_mode, self.controls = buffer_count, sensor_mode, dict(controls or {})
        fps = float(self.controls.get("FrameRate") or 30.0)
        # a few frame times, and never under half a second (the first frame after start takes longer)
        self.frame_timeout = frame_timeout if frame_timeout is not None else max(0.5, 5.0 / fps)
        self.color = PICAMERA_FORMATS[lores_format]
        self.name = f"picam:{camera_num}"
        self._factory = camera_factory
        self._camera: Any = None
        self._first = True
        self._crop: tuple[int, int, int] | None = None  # (width, height, stride) of a padded YUV420 lores
        self._matrix: tuple[str, bool] = ("601", False)  # the lores YUV encoding and whether it is full range
        self.configuration: Any = None

    def open(self) -> None:
        factory = self._factory or _import_picamera2()
        try:
            camera = factory(self.camera_num)
        except Exception as exc:  # IndexError (no such camera), RuntimeError (libcamera), OSError
            raise CameraError(
                f"cannot open Raspberry Pi camera {self.camera_num} ({type(exc).__name__}: {exc}); check the ribbon "
                "cable, 'rpicam-hello --list-cameras', and the camera settings in /boot/firmware/config.txt"
            ) from None
        try:
            config = self._configure(camera)
            camera.start()
        except Exception as exc:
            _quietly(camera.close)
            if isinstance(exc, (ConfigError, CameraError)):
                raise
            raise CameraError(f"cannot start Raspberry Pi camera {self.camera_num} ({exc})") from None
        self._camera, self.configuration, self._first = camera, config, True

    def _configure(self, camera: Any) -> Any:
        lores_size = _aligned_lores(self.lores_size, self.main_size, _alignment(camera, self.lores_format))
        kwargs: dict[str, Any] = {
            "main": {"size": self.main_size, "format": self.main_format},
            "lores": {"size": lores_size, "format": self.lores_format},
            "buffer_count": self.buffer_count,
            "queue": False,  # capture_array then waits for a fresh frame instead of a queued stale one
        }
        if self.controls:
            kwargs["controls"] = self.controls
        if self.lores_format == "YUV420":
            space = _bt601_colour_space()
            if space is not None:
                kwargs["colour_space"] = space
        if self.sensor_mode is not None:
            modes = camera.sensor_modes
            if not 0 <= self.sensor_mode < len(modes):
                raise ConfigError(f"sensor mode {self.sensor_mode} does not exist; this sensor has {len(modes)}")
            mode = modes[self.sensor_mode]
            kwargs["sensor"] = {"output_size": mode["size"], "bit_depth": mode["bit_depth"]}
        config = camera.create_video_configuration(**kwargs)
        camera.align_configuration(config)  # aligns main; it would round lores down, which is aligned already
        config["lores"]["size"] = lores_size
        camera.configure(config)
        final = (camera.camera_configuration() if hasattr(camera, "camera_configuration") else None) or config
        lw, lh = final["lores"]["size"]
        mw, mh = final["main"]["size"]
        if lw <= 0 or lh <= 0 or abs(lw / lh - mw / mh) > 0.02 * (mw / mh):
            raise CameraError(
                f"the camera made the lores stream {lw}x{lh} for main {mw}x{mh}: a different aspect ratio would "
                "squeeze the picture; give lores_size and main_size with the same aspect ratio"
            )
        stride = final["lores"].get("stride") or 0
        self._crop = (lw, lh, stride) if self.lores_format == "YUV420" and stride > lw else None
        if self.lores_format == "YUV420":
            self._matrix = yuv_matrix(final.get("colour_space"))
            self.color = "yuv420" if self._matrix == ("601", False) else "rgb"
        return final

    def read(self) -> np.ndarray | None:
        camera = self._camera
        if camera is None:
            raise CameraError(f"{self.name} is not open")
        timeout = self.frame_timeout * (4 if self._first else 1)
        try:
            frame = camera.capture_array("lores", wait=timeout)
        except Exception as exc:  # TimeoutError when frames stop; libcamera reports a lost camera as RuntimeError
            if _is_timeout(exc):
                _quietly(getattr(camera, "cancel_all_and_flush", lambda: None))  # a stop() behind it would deadlock
                raise CameraError(
                    f"{self.name} delivered no frame for {timeout:.1f} s (a loose ribbon cable, or 'frontend has "
                    "timed out' in the system log); reopening it"
                ) from None
            raise CameraError(f"{self.name} stopped delivering frames ({type(exc).__name__}: {exc})") from None
        self._first = False
        if self.lores_format != "YUV420":
            return frame
        if self._crop is not None:
            frame = _crop_i420(frame, *self._crop)
        if self._matrix != ("601", False):
            return yuv420_to_rgb(frame, *self._matrix)
        return frame

    def close(self) -> None:
        camera, self._camera = self._camera, None
        if camera is not None:
            try:
                _quietly(getattr(camera, "cancel_all_and_flush", lambda: None))
                _quietly(camera.stop)  # a camera that is gone cannot be stopped; it is still closed
            finally:
                _quietly(camera.close)


def _quietly(fn: Callable[[], Any]) -> None:
    # closing a failed camera: there is nothing more to tell than the failure already reported
    with contextlib.suppress(Exception):
        fn()


def _is_timeout(exc: BaseException) -> bool:
    import concurrent.futures

    return isinstance(exc, (TimeoutError, concurrent.futures.TimeoutError))


def _alignment(camera: Any, fmt: str) -> int:
    """The lores width multiple picamera2's align_configuration would round to (32 bytes on a Pi 4's VC4 ISP, 64 on
    a Pi 5's PiSP; twice that in pixels for YUV420, half for the 4-byte formats)."""
    platform = str(getattr(camera, "platform", "") or getattr(type(camera), "platform", ""))
    align = 32 if "VC4" in platform.upper() else 64  # unknown: the larger, which suits both
    if fmt in ("YUV420", "YVU420"):
        return align * 2
    if fmt in ("XBGR8888", "XRGB8888"):
        return align // 2
    return align


def _aligned_lores(size: tuple[int, int], main: tuple[int, int], align: int) -> tuple[int, int]:
    """``size`` with the width rounded up to ``align`` (down only where main is narrower) and the height following
    main's aspect ratio, so the lores stream covers what was asked without a squeeze."""
    w, h = size
    mw, mh = main
    aligned = -(-w // align) * align
    if aligned > mw:
        aligned = max(align, mw // align * align) if mw >= align else mw
    height = _even(max(h if aligned >= w else 0, round(aligned * mh / mw)))
    return aligned, min(height, mh - mh % 2)


def _bt601_colour_space() -> Any:
    try:
        import libcamera  # comes with picamera2 on Raspberry Pi OS

        return libcamera.ColorSpace.Smpte170m()
    except Exception:
        return None


def _crop_i420(frame: np.ndarray, width: int, height: int, stride: int) -> np.ndarray:
    """A contiguous I420 array (height*3/2, width) from one whose rows are ``stride`` bytes (picamera2 keeps the
    padding): the Y plane's rows, then the U and V planes' (half as wide, with half the stride)."""
    flat = np.ascontiguousarray(frame).reshape(-1)
    y = flat[: stride * height].reshape(height, stride)[:, :width]
    chroma = (stride // 2) * (height // 2)
    u = flat[stride * height : stride * height + chroma].reshape(height // 2, stride // 2)[:, : width // 2]
    v = flat[stride * height + chroma : stride * height + 2 * chroma].reshape(height // 2, stride // 2)[:, : width // 2]
    return np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(height * 3 // 2, width)


def lores_size_for(model_size: tuple[int, int], main_size: tuple[int, int]) -> tuple[int, int]:
    """The smallest even (width, height) with ``main_size``'s aspect ratio that covers ``model_size`` (w, h).

    >>> lores_size_for((224, 224), (1280, 960))
    (300, 224)
    """
    mw, mh = main_size
    scale = max(model_size[0] / mw, model_size[1] / mh)
    return _even(min(mw, round(mw * scale))), _even(min(mh, round(mh * scale)))


def _even(n: int) -> int:
    return max(2, int(n) + (int(n) & 1))


def _import_picamera2() -> Callable[..., Any]:
    try:
        from picamera2 import Picamera2

        return Picamera2
    except Exception as exc:  # numpy ABI mismatch ("numpy.dtype size changed"), libcamera failing to load
        failure = exc
    if isinstance(failure, ImportError) and "numpy" not in str(failure):
        raise CameraError(f"the picam source needs picamera2, which is not installed here; {PICAMERA2_HINT}")
    raise CameraError(
        f"picamera2 is installed but fails to import ({type(failure).__name__}: {failure}). Its compiled parts are "
        "built for the system numpy: in this venv run pip install \"numpy==$(/usr/bin/python3 -c 'import numpy; "
        "print(numpy.__version__)')\" (edgecls's install.sh pins it for you)"
    )


def _import_cv2() -> Any:
    try:
        import cv2
    except ImportError:
        raise CameraError(
            "USB cameras, video files and network streams need OpenCV: pip install 'edgecls[camera]'"
        ) from None
    return cv2


# -- what --source and the camera options say ----------------------------------------------------------------------


def _size_pair(value: Any, what: str) -> tuple[int, int] | None:
    if value is None:
        return None
    pair = tuple(value) if isinstance(value, (tuple, list)) else ()
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 16 for v in pair):
        raise ConfigError(f"{what} must be (width, height), two integers >= 16 (received {value!r})")
    return pair  # type: ignore[return-value]


@dataclass(frozen=True)
class PicameraOptions:
    """picamera2 settings of a Raspberry Pi camera (or the AI Camera's main stream): see `PicameraSource`. None
    leaves a setting to the source (the lores size then follows the model's input)."""

    main_size: tuple[int, int] | None = None
    main_format: str | None = None
    lores_size: tuple[int, int] | None = None
    lores_format: str | None = None
    buffer_count: int | None = None
    sensor_mode: int | None = None
    controls: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "main_size", _size_pair(self.main_size, "picamera main_size"))
        object.__setattr__(self, "lores_size", _size_pair(self.lores_size, "picamera lores_size"))
        for name in ("main_format", "lores_format"):
            value = getattr(self, name)
            if value is not None and value not in PICAMERA_FORMATS:
                raise ConfigError(f"picamera {name} must be one of {', '.join(PICAMERA_FORMATS)} (received {value!r})")
        for name, low in (("buffer_count", 2), ("sensor_mode", 0)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
                raise ConfigError(f"picamera {name} must be an integer >= {low} (received {value!r})")
        if self.controls is not None:
            if not isinstance(self.controls, Mapping):
                raise ConfigError(f"picamera controls must be a table of name = value (received {self.controls!r})")
            object.__setattr__(self, "controls", MappingProxyType(dict(self.controls)))

    def kwargs(self) -> dict[str, Any]:
        """The settings given, as keyword arguments of `PicameraSource` (and the AI Camera's source)."""
        given = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        if "controls" in given:
            given["controls"] = dict(given["controls"])
        return given


@dataclass(frozen=True)
class SourceConfig:
    """Where frames come from, as one value: ``spec``, the ``--source`` text (see SOURCE_FORMS) or a camera index
    (None: not set yet, e.g. a device profile's camera is to be used, `edgecls.device.profiles.Profile.apply`);
    ``width``/``height``/``fps``: what to ask a camera for; ``loop``: start a file or image folder over at its end;
    ``picamera``: a Raspberry Pi camera's settings. Checked when made; `parse_source` builds the source.

    >>> SourceConfig("picam", fps=30, picamera=PicameraOptions(main_size=(1536, 864))).picamera.main_size
    (1536, 864)
    """

    spec: str | int | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    loop: bool = False
    picamera: PicameraOptions | None = None

    def __post_init__(self) -> None:
        spec = self.spec
        if spec is not None and (isinstance(spec, bool) or not isinstance(spec, (str, int))):
            raise ConfigError(f"the source must be a --source text or a camera index (received {spec!r})")
        if isinstance(spec, int) and spec < 0:
            raise ConfigError(f"a camera index is 0 or more (received {spec})")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 16):
                raise ConfigError(f"camera {name} must be an integer >= 16 (received {value!r})")
        if self.fps is not None and (
            not isinstance(self.fps, (int, float)) or isinstance(self.fps, bool) or not self.fps > 0
        ):
            raise ConfigError(f"camera fps must be a positive number (received {self.fps!r})")
        if isinstance(self.picamera, Mapping):  # a profile's or a script's table
            unknown = sorted(set(self.picamera) - {f.name for f in fields(PicameraOptions)})
            if unknown:
                raise ConfigError(
                    f"unknown picamera setting {unknown[0]!r}; expected one of "
                    + ", ".join(f.name for f in fields(PicameraOptions))
                )
            object.__setattr__(self, "picamera", PicameraOptions(**self.picamera))
        elif self.picamera is not None and not isinstance(self.picamera, PicameraOptions):
            raise ConfigError(f"picamera must be PicameraOptions (received {self.picamera!r})")


def parse_source(
    source: str | int | SourceConfig,
    *,
    model_size: tuple[int, int] | None = None,
    grayscale: bool = False,
) -> FrameSource:
    """Build the source a ``--source`` text (or a `SourceConfig`) names (see SOURCE_FORMS); nothing is opened yet.

    The config's ``width``/``height``/``fps`` go to cameras; ``model_size`` (w, h) sizes picamera2's lores stream
    unless its ``picamera`` settings give ``lores_size``.
    """
    config = source if isinstance(source, SourceConfig) else SourceConfig(source)
    spec, width, height, fps = config.spec, config.width, config.height, config.fps
    if spec is None:
        raise ConfigError(f"no source given; expected {SOURCE_FORMS}")
    if isinstance(spec, int):
        return OpenCVSource(spec, width=width, height=height, fps=fps)
    text = spec.strip()
    if not text:
        raise ConfigError(f"empty --source; expected {SOURCE_FORMS}")
    if text == "demo" or text.startswith("demo:"):
        return DemoSource(fps=_number(text[5:], "demo fps") if text.startswith("demo:") else (fps or 30.0))
    if text == "imx500" or text.startswith("imx500:"):
        raise ConfigError(
            f"--source {text}: the AI Camera runs its network itself, so it comes with its classifier: "
            "edgecls run RUN --source imx500, or edgecls.Stream(RUN, source='imx500')"
        )
    if text == "picam" or text.startswith("picam:"):
        index = int(_number(text[6:], "picam camera number")) if text.startswith("picam:") else 0
        options = config.picamera.kwargs() if config.picamera else {}
        if fps:
            options["controls"] = {"FrameRate": float(fps), **(options.get("controls") or {})}
        main = tuple(options.pop("main_size", None) or (width or 1280, height or 960))
        lores = options.pop("lores_size", None)
        if lores is None:
            lores = lores_size_for(model_size, main) if model_size else (min(320, main[0]), min(240, main[1]))
        return PicameraSource(index, main_size=main, lores_size=tuple(lores), **options)
    if text.isdigit():
        return OpenCVSource(int(text), width=width, height=height, fps=fps)
    kind = _opencv_kind(text)
    if kind != "file":
        return OpenCVSource(text, width=width, height=height, fps=fps)
    path = Path(text)
    try:
        is_dir, exists = path.is_dir(), path.exists()
    except OSError as exc:  # e.g. a file in a folder the service's user may not enter
        raise CameraError(
            f"cannot read the source {text!r} ({exc.strerror}); check that this user may read it"
        ) from None
    if is_dir or path.suffix.lower() in IMAGE_SUFFIXES or (not exists and glob.has_magic(text)):
        return ImageFilesSource([text], grayscale=grayscale)
    if path.suffix.lower() in VIDEO_SUFFIXES or path.is_file():
        return OpenCVSource(text)
    raise CameraError(f"no such file, device or source: {text!r}; expected {SOURCE_FORMS}")


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{what} must be a number (received {text!r})") from None
    if value < 0:
        raise ConfigError(f"{what} must not be negative (received {text!r})")
    return value


__all__ = [
    "NOT_READY",
    "PICAMERA_FORMATS",
    "DemoSource",
    "FrameSource",
    "ImageFilesSource",
    "OpenCVSource",
    "PicameraOptions",
    "PicameraSource",
    "SourceConfig",
    "lores_size_for",
    "parse_source",
]
