"""The annotated video file sink (``video:PATH``): the stream, drawn on, written with OpenCV."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from edgecls.errors import ConfigError, SinkError
from edgecls.live.stream import StreamResult
from edgecls.sinks.drawing import annotate

# The container each file suffix gets, and its codec.
FOURCC = {".avi": "MJPG", ".mp4": "mp4v", ".mkv": "MJPG"}


def check_video_path(path: str) -> None:
    """ConfigError unless ``path`` ends in a suffix the video sink writes (checked before anything is opened)."""
    if not path.lower().endswith(tuple(FOURCC)):
        raise ConfigError(f"video sink {path}: the file must end in {', '.join(FOURCC)}")


def _import_cv2_for(what: str) -> Any:
    try:
        import cv2
    except ImportError:
        raise SinkError(
            f"{what} draws and encodes frames with OpenCV, which is not installed: pip install 'edgecls[camera]'"
        ) from None
    return cv2


class VideoSink:
    """The stream, annotated, written to a video file with OpenCV (``.avi``: MJPG, ``.mp4``: mp4v).

    Frames go to a ``.partial`` file renamed to ``path`` on close, so an interrupted run never leaves a
    half-written file under the final name.
    """

    FOURCC: ClassVar[dict[str, str]] = FOURCC

    def __init__(self, path: str | os.PathLike[str], *, fps: float = 30.0) -> None:
        self.path = Path(path)
        check_video_path(str(path))
        if not fps > 0:
            raise ConfigError(f"video sink {self.path}: fps must be positive (received {fps})")
        self.fps = fps
        self.partial = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.frames = 0
        self._writer: Any = None
        _import_cv2_for("the video sink")
        try:  # fail now, not after the first frame: the folder must exist (or be made) and be writable
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.partial, "wb"):
                pass
            os.unlink(self.partial)
        except OSError as exc:
            raise SinkError(
                f"cannot write the video {self.path} ({exc.strerror or exc}); check the folder and its permissions"
            ) from None

    def write(self, result: StreamResult) -> None:
        if result.frame is None:
            raise SinkError("the video sink needs the frames: make the stream with keep_frames=True")
        import cv2

        image = annotate(result)
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fourcc = cv2.VideoWriter_fourcc(*self.FOURCC[self.path.suffix.lower()])
            self._writer = cv2.VideoWriter(str(self.partial), fourcc, self.fps, (image.shape[1], image.shape[0]))
            if not self._writer.isOpened():
                self._writer = None
                raise SinkError(f"OpenCV cannot write {self.path}; try a .avi file")
            self._size = (image.shape[1], image.shape[0])
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size)
        self._writer.write(image)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            os.replace(self.partial, self.path)
