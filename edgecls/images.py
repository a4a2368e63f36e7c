"""Reading image files (jpg, png, bmp, webp, ...) into uint8 arrays, with EXIF orientation applied."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .errors import ImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def read_image(path: str | os.PathLike[str], *, grayscale: bool = False) -> np.ndarray:
    """Read an image file as an RGB (HxWx3) or, with ``grayscale``, an HxW uint8 array.

    EXIF orientation is applied; palette, RGBA, 16-bit and grayscale files are converted. A missing, corrupt or
    unsupported file raises ImageError naming the file.
    """
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            return _decode(fh, str(p), grayscale)
    except FileNotFoundError:
        raise ImageError(f"image file not found: {p}") from None
    except IsADirectoryError:
        raise ImageError(f"expected an image file, received a directory: {p}") from None


def decode_image(data: bytes, *, name: str = "<bytes>", grayscale: bool = False) -> np.ndarray:
    """Decode an encoded image (file contents) exactly as read_image does; ``name`` is used in errors."""
    import io

    return _decode(io.BytesIO(data), name, grayscale)


def _decode(fh, name: str, grayscale: bool) -> np.ndarray:  # type: ignore[no-untyped-def]
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(fh) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_array(im, grayscale)
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file Pillow can read (jpg, png, bmp, webp, gif, tiff)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{name}: corrupt or truncated image ({exc})") from None


def _to_array(im, grayscale: bool) -> np.ndarray:  # type: ignore[no-untyped-def]
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
    """Expand directories (recursively, image suffixes only, sorted) and glob patterns; other paths pass through."""
    for item in items:
        text = str(item)
        p = Path(text)
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif not p.exists() and glob.has_magic(text):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
            if not matches:
                yield p  # reported as not found by the reader
            yield from (m for m in matches if m.is_file())
        else:
            yield p
