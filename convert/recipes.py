"""The recipe a run starts from: the best flags we have measured for the kind of model and data, under whatever the
user gives. A flag the user gives always wins; the recipe fills only the ones left out.

- ``transfer`` (a MobileNet from ImageNet weights): the flowers128 benchmark's recipe, 79.7% int8 top-1 as a mean
  over three splits (docs/convert.md, "Quality on flowers128"): 160 px, a short frozen-head stage, then the whole
  base fine-tuned at a tenth of the learning rate, moderate augmentation, label smoothing, and int8 weights fitted
  to the float model (`int8-tune`), which bias correction alone left agreeing on only 95-96% of the images. Measured
  with MobileNet V1 0.25; the other MobileNets get it as the best recipe known, not a measured one.
- ``compact`` (compact-cnn, the flagless default): the benchmark's compact-cnn flags at the default 96 px, with the
  epochs cut so that a flowers128 run stays under 20 minutes on 2 cores: 48 filters, dropout 0.3, learning rate
  0.002, label smoothing 0.1, strong augmentation. ``compact-small`` is the same for inputs of 32 px or less (digits,
  glyphs, sensor maps), with gentler augmentation: a digit turned by 40 degrees or shifted by a fifth of its frame is
  another digit or none (and `--flip auto` leaves small grayscale images unmirrored). benchmarks/defaults_across_data.py
  measures both on three kinds of data (docs/convert.md, "Defaults across kinds of data").
- ``seed-cnn`` (the tutorial CNN) and MobileNets from random weights: the option defaults.
"""

from __future__ import annotations

from typing import Any

from .models import architecture

TRANSFER: dict[str, Any] = {
    "input_size": 160, "epochs": 8, "fine_tune_epochs": 40, "fine_tune_layers": 100, "patience": 10,
    "learning_rate": 0.001, "augment": 0.7, "label_smoothing": 0.1, "calibration_samples": 500,
    "int8_method": "int8-tune",
}
COMPACT: dict[str, Any] = {
    "width": 48, "dropout": 0.3, "learning_rate": 0.002, "label_smoothing": 0.1, "augment": 1.5, "epochs": 50,
    "patience": 15,
}
SMALL_INPUT = 32  # px: at or under this, images are glyphs rather than photos
COMPACT_SMALL: dict[str, Any] = {**COMPACT, "augment": 0.5}

RECIPES: dict[str, dict[str, Any]] = {"transfer": TRANSFER, "compact": COMPACT, "compact-small": COMPACT_SMALL}


def recipe(arch: str, options: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The recipe's name and the values it sets that ``options`` (the user's) leave out."""
    family = architecture(arch).family
    name: str | None = None
    if family == "mobilenet" and str(options.get("weights", "imagenet")).lower() != "none":
        name = "transfer"
    elif family == "compact":
        size = options.get("input_size")
        name = "compact-small" if size is not None and int(size) <= SMALL_INPUT else "compact"
    if name is None:
        return None, {}
    return name, {k: v for k, v in RECIPES[name].items() if k not in options}
