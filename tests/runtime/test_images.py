from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgecls.errors import ImageError
from edgecls.model.images import expand_image_paths, read_image


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)  # left half red in the stored (unrotated) image
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif.tobytes(), quality=95)
    arr = read_image(path)
    assert arr.shape == (40, 20, 3)  # displayed upright: portrait
    assert arr[5, 10, 0] > 200 and arr[35, 10, 0] < 60  # the red half is now on top


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "LA", "CMYK"])
def test_modes_are_converted(tmp_path, mode):
    base = Image.new("RGB", (16, 12), (10, 200, 30))
    if mode == "I;16":
        image = Image.fromarray(np.full((12, 16), 50000, np.uint16))
    elif mode == "CMYK":
        image = base.convert("CMYK")
    else:
        image = base.convert(mode)
    suffix = ".jpg" if mode == "CMYK" else ".png"
    path = tmp_path / f"img{suffix}"
    image.save(path)
    arr = read_image(path)
    assert arr.shape == (12, 16, 3) and arr.dtype == np.uint8
    if mode == "I;16":
        assert abs(int(arr[0, 0, 0]) - round(50000 * 255 / 65535)) <= 1
    assert read_image(path, grayscale=True).shape == (12, 16)


def test_transparent_pixels_become_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    path = tmp_path / "clear.png"
    Image.fromarray(rgba, "RGBA").save(path)
    assert read_image(path).min() == 255


def test_webp_and_bmp(tmp_path):
    for suffix in (".webp", ".bmp"):
        path = tmp_path / f"x{suffix}"
        Image.new("RGB", (8, 8), (0, 0, 255)).save(path)
        assert read_image(path)[0, 0, 2] > 200


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(ImageError, match="not found: .*nope.jpg"):
        read_image(tmp_path / "nope.jpg")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ImageError, match="notes.jpg: not an image"):
        read_image(text)
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:400])
    with pytest.raises(ImageError, match="truncated.jpg: corrupt or truncated"):
        read_image(truncated)
    with pytest.raises(ImageError, match="directory"):
        read_image(tmp_path)


def test_expand_directories_and_globs(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/1.jpg", "a/2.PNG", "a/skip.txt", "3.bmp"):
        (tmp_path / name).write_bytes(b"x")
    found = [p.name for p in expand_image_paths([tmp_path])]
    assert found == ["3.bmp", "1.jpg", "2.PNG"]
    assert [p.name for p in expand_image_paths([str(tmp_path / "a" / "*.jpg")])] == ["1.jpg"]
    assert [p.name for p in expand_image_paths([str(tmp_path / "none*.jpg")])] == ["none*.jpg"]
