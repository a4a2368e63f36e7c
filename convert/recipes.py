"""The recipe a run starts from: the best flags we have measured for the kind of model and data, under whatever the
user gives. A flag the user gives always wins; the recipe fills only the ones left out.

- ``transfer`` (a MobileNet from ImageNet weights): the flowers128 benchmark's recipe, 79.7% int8 top-1 as a mean
  over three splits (docs/convert.md, "Quality on flowers128"): 160 px, a short frozen-head stage, then the whole
  base fine-tuned at a tenth of the learning rate, moderate augmentation, label smoothing, and int8 weights fitted
  to the float model (`int8-tune`), which bias correction alone left agreeing on only 95-96% of the images. Measured
  with MobileNet V1 0.25; the other MobileNets get it as the best recipe known, not a measured one.
- ``compact`` (compact-cnn, the flagless default): the flowers128 benchmark's compact-cnn flags (48 filters,
  dropout 0.3, learning rate 0.002, label smoothing 0.1, strong augmentation) with the epochs cut so that a
  flowers128 run stays under 20 minutes on 2 cores. Its input size follows the images (`input_size_for`): 128 px
  for photos of 128 px or more, the largest of 96, 64, 48 px the images fill, and the images' own size at 32 px or
  less; the colour is grayscale when every image is. ``compact-small`` is the same for inputs of 32 px or less
  (digits, glyphs, sensor maps), with gentler augmentation: a digit turned by 40 degrees or shifted by a fifth of
  its frame is another digit or none (and `--flip auto` leaves small grayscale images unmirrored).
  benchmarks/defaults_across_data.py measures both on three kinds of data (docs/convert.md, "Defaults across kinds
  of data").
- ``seed-cnn`` (the tutorial CNN) and MobileNets from random weights: the option defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .models import architecture

TRANSFER: dict[str, Any] = {
    "input_size": 160,
    "epochs": 8,
    "fine_tune_epochs": 40,
    "fine_tune_layers": 100,
    "patience": 10,
    "learning_rate": 0.001,
    "augment": 0.7,
    "label_smoothing": 0.1,
    "calibration_samples": 500,
    "int8_method": "int8-tune",
}
COMPACT: dict[str, Any] = {
    "width": 48,
    "dropout": 0.3,
    "learning_rate": 0.002,
    "label_smoothing": 0.1,
    "augment": 1.5,
    "epochs": 55,
    "patience": 15,
}
SMALL_INPUT = 32  # px: at or under this, images are glyphs rather than photos
COMPACT_SMALL: dict[str, Any] = {**COMPACT, "epochs": 50, "augment": 0.5}
COMPACT_SIZES = (128, 96, 64, 48)  # the input sizes compact-cnn's recipe picks from, for images larger than SMALL_INPUT

RECIPES: dict[str, dict[str, Any]] = {"transfer": TRANSFER, "compact": COMPACT, "compact-small": COMPACT_SMALL}


def recipe(
    arch: str, options: dict[str, Any], data: str | os.PathLike[str] | None = None
) -> tuple[str | None, dict[str, Any]]:
    """The recipe's name and the values it sets that ``options`` (the user's) leave out; for compact-cnn the input
    size follows the images in ``data`` (`input_size_for`) when the user gives none, and the colour is
    grayscale when every image is."""
    family = architecture(arch).family
    name: str | None = None
    fills: dict[str, Any] = {}
    if family == "mobilenet" and str(options.get("weights", "imagenet")).lower() != "none":
        name = "transfer"
    elif family == "compact":
        size = options.get("input_size")
        if data is not None and (size is None or "color" not in options):
            side, gray = look_at(Path(data))
            if size is None and side is not None:
                size = fills["input_size"] = input_size_for(side)
            if gray and options.get("target") != "imx500":  # the AI Camera's sensor gives RGB
                fills["color"] = "grayscale"  # a third of the input work, and nothing to learn from
        name = "compact-small" if size is not None and int(size) <= SMALL_INPUT else "compact"
    if name is None:
        return None, {}
    fills.update(RECIPES[name])
    return name, {k: v for k, v in fills.items() if k not in options}


def input_size_for(side: int | None) -> int | None:
    """compact-cnn's input size for images whose shorter side is typically ``side`` px (None: unknown)."""
    if side is None:
        return None
    if side <= SMALL_INPUT:
        return max(16, side)
    return next((size for size in COMPACT_SIZES if side >= size), COMPACT_SIZES[-1])


def look_at(data: Path, most: int = 200) -> tuple[int | None, bool]:
    """The median shorter side of up to ``most`` of the images under ``data`` (read from their headers only, spread
    over the class folders), and whether every one of them is grayscale; (None, False) when none can be read."""
    from PIL import Image

    from edgecls.model.images import IMAGE_SUFFIXES

    if not data.is_dir():
        return None, False
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    step = max(1, len(files) // most)
    sides, modes = [], set()
    for path in files[::step][:most]:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
                modes.add(image.mode)
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    if not sides:
        return None, False
    return int(sorted(sides)[len(sides) // 2]), modes <= {"L", "LA", "1", "I;16", "I"}
