"""Reading image files (jpg, png, bmp, webp, ...) into uint8 arrays, with EXIF orientation applied."""

from __future__ import annotations

import glob
import os
import stat
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgecls.errors import ImageError
from edgecls.fsutil import os_reason

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def read_image(path: str | os.PathLike[str], *, grayscale: bool = False, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as an RGB (HxWx3) or, with ``grayscale``, an HxW uint8 array.

    EXIF orientation is applied; palette, RGBA, 16-bit, 32-bit and float grayscale files are converted. A JPEG
    larger than ``max_pixels`` (default `MAX_PIXELS`) is decoded reduced (by 2, 4 or 8, as JPEG can); any other
    image above it is refused, so a small file cannot take gigabytes. A missing, unreadable, corrupt or unsupported
    file, a directory, a FIFO or a symlink loop raises ImageError naming the file.
    """
    p = Path(path)
    try:
        st = os.stat(p)
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(f"expected an image file, received a directory: {p}")
        if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block the reader
            raise ImageError(f"{p}: not a regular file (a FIFO, socket or device); pass an image file")
        with open(p, "rb") as fh:
            return _decode(fh, str(p), grayscale, max_pixels)
    except FileNotFoundError:
        raise ImageError(f"image file not found: {p}") from None
    except OSError as exc:  # permission denied, a symlink loop, an I/O error
        raise ImageError(f"cannot read {p} ({os_reason(exc)})") from None


# Above this many pixels an image is decoded reduced (JPEG) or refused: 8,000 x 8,000 RGB is 192 MB decoded, and
# no classifier input needs more. Raise it with read_image(max_pixels=...).
MAX_PIXELS = 64_000_000


def decode_image(
    data: bytes, *, name: str = "<bytes>", grayscale: bool = False, max_pixels: int | None = None
) -> np.ndarray:
    """Decode an encoded image (file contents) exactly as read_image does; ``name`` is used in errors."""
    import io

    return _decode(io.BytesIO(data), name, grayscale, max_pixels)


def _decode(fh, name: str, grayscale: bool, max_pixels: int | None = None) -> np.ndarray:  # type: ignore[no-untyped-def]
    from PIL import Image, ImageOps, UnidentifiedImageError

    limit = max_pixels or MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit below says more
            im = Image.open(fh)
        with im:
            w, h = im.size
            if w * h > limit and im.format == "JPEG":
                # JPEG decodes at 1/2, 1/4 or 1/8 directly: the full-size pixels are never held
                factor = 2
                while factor < 8 and (w * h) / (factor * factor) > limit:
                    factor *= 2
                im.draft("L" if grayscale else "RGB", (-(-w // factor), -(-h // factor)))
            if im.size[0] * im.size[1] > limit:
                raise ImageError(
                    f"{name}: {w}x{h} pixels is more than edgecls decodes ({limit:,} pixels); resize it first"
                )
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_array(im, grayscale, name)
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file Pillow can read (jpg, png, bmp, webp, gif, tiff)") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: more pixels than edgecls decodes ({limit:,}); resize it first") from None
    except (OSError, ValueError, SyntaxError, MemoryError) as exc:
        raise ImageError(f"{name}: corrupt or truncated image ({exc})") from None


def _to_array(im, grayscale: bool, name: str = "<image>") -> np.ndarray:  # type: ignore[no-untyped-def]
    if im.mode == "F":
        # 32-bit float (scientific TIFFs): values in [0, 1] are scaled to 0..255, anything else is ambiguous
        arr = np.asarray(im, dtype=np.float32)
        finite = arr[np.isfinite(arr)]
        if finite.size == 0 or finite.min() < 0 or finite.max() > 255:
            raise ImageError(
                f"{name}: a floating-point image with values outside 0..1 and 0..255 (min "
                f"{finite.min() if finite.size else 'nan'}, max {finite.max() if finite.size else 'nan'}); "
                "convert it to 8-bit first"
            )
        top = 1.0 if finite.max() <= 1.0 else 255.0
        gray = np.clip(np.rint(np.nan_to_num(arr) * (255.0 / top)), 0, 255).astype(np.uint8)
        return gray if grayscale else np.repeat(gray[:, :, None], 3, axis=2)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit (or 32-bit integer) grayscale: keep the high byte of the full range, not a clipped low one.
        arr = np.asarray(im, dtype=np.uint32 if im.mode == "I" else np.uint16)
        top = 65535.0 if arr.max() > 255 else 255.0
        gray = np.clip(np.rint(arr.astype(np.float32) * (255.0 / top)), 0, 255).astype(np.uint8)
        return gray if grayscale else np.repeat(gray[:, :, None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        # Composite on white: transparent regions would otherwise turn into arbitrary colours.
        from PIL import Image

        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im.convert("RGBA"))
    return np.asarray(im.convert("L" if grayscale else "RGB"))


def expand_image_paths(items: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Expand directories (recursively, image suffixes only, sorted) and glob patterns; other paths pass through.

    In a directory, entries with an image suffix that are not readable files (a symlink loop or a broken link, a
    FIFO) are yielded too, so the reader names them instead of their being skipped without a word; symlinked
    directories are not followed (no walk in circles)."""
    for item in items:
        text = str(item)
        p = Path(text)
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and not f.is_dir())
        elif not p.exists() and glob.has_magic(text):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
            if not matches:
                yield p  # reported as not found by the reader
            yield from (m for m in matches if m.is_file())
        else:
            yield p


def yuv_matrix(space: Any) -> tuple[str, bool]:
    """(encoding "601"/"709"/"2020", full range) of a libcamera ColorSpace (Sycc: 601 full; Smpte170m: 601
    limited; Rec709: 709 limited)."""
    if space is None:
        return ("601", False)
    encoding, rng = getattr(space, "ycbcrEncoding", None), getattr(space, "range", None)
    text = f"{encoding} {rng}" if encoding is not None else str(space)
    text = text.lower()
    if "sycc" in text or "jpeg" in text:
        return ("601", True)
    full = "full" in text
    for name in ("709", "2020"):
        if name in text:
            return (name, full)
    return ("601", full)


# Kr, Kb of each YCbCr encoding
_KR_KB = {"601": (0.299, 0.114), "709": (0.2126, 0.0722), "2020": (0.2627, 0.0593)}


def yuv420_to_rgb(frame: np.ndarray, encoding: str = "601", full_range: bool = False) -> np.ndarray:
    """An RGB image from an I420 array (H*3/2, W) in the given YCbCr encoding (OpenCV's conversion knows only
    BT.601 limited range)."""
    h, w = frame.shape[0] * 2 // 3, frame.shape[1]
    y = frame[:h].astype(np.float32)
    u = frame[h : h + h // 4].reshape(h // 2, w // 2).astype(np.float32) - 128.0
    v = frame[h + h // 4 :].reshape(h // 2, w // 2).astype(np.float32) - 128.0
    if not full_range:
        y = (y - 16.0) * (255.0 / 219.0)
        u, v = u * (255.0 / 224.0), v * (255.0 / 224.0)
    u = u.repeat(2, axis=0).repeat(2, axis=1)
    v = v.repeat(2, axis=0).repeat(2, axis=1)
    kr, kb = _KR_KB[encoding]
    kg = 1.0 - kr - kb
    r = y + 2.0 * (1.0 - kr) * v
    b = y + 2.0 * (1.0 - kb) * u
    g = (y - kr * r - kb * b) / kg
    return np.clip(np.stack([r, g, b], axis=-1) + 0.5, 0, 255).astype(np.uint8)


def to_rgb(frame: np.ndarray, color: str) -> np.ndarray:
    """An RGB (or single-channel gray) uint8 image from a frame in a source's ``color`` order."""
    if color == "yuv420":
        from edgecls.model.images import yuv420_to_rgb

        return yuv420_to_rgb(frame)
    if frame.ndim == 2 or frame.shape[2] == 1:
        return frame.reshape(frame.shape[0], frame.shape[1])
    rgb = frame[..., :3]
    return np.ascontiguousarray(rgb[..., ::-1] if color == "bgr" else rgb)
