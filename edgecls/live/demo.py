"""A procedural image generator: shapes and textures with random colours, backgrounds, scale, rotation and noise.

It gives a newcomer with no data a real, learnable task (`edgecls convert --demo`), and the `demo` stream source
frames to classify on a machine without a camera. Only numpy and Pillow: the device runtime can use it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

DEMO_CLASSES = ("circle", "square", "triangle", "star", "stripes")
_SUPERSAMPLE = 3


def render(label: str, rng: np.random.Generator, *, size: int = 64) -> np.ndarray:
    """One RGB uint8 image (size x size) of class ``label``."""
    from PIL import Image, ImageDraw

    if label not in DEMO_CLASSES:
        raise ValueError(f"unknown demo class {label!r}; expected one of {', '.join(DEMO_CLASSES)}")
    big = size * _SUPERSAMPLE
    background = _background(rng, big)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    fg = _contrasting_colour(rng, background.reshape(-1, 3).mean(axis=0))
    if label == "stripes":
        _stripes(draw, rng, big, fg)
    else:
        radius = big * rng.uniform(0.2, 0.42)
        cx = big / 2 + rng.uniform(-0.15, 0.15) * big
        cy = big / 2 + rng.uniform(-0.15, 0.15) * big
        angle = rng.uniform(0, 2 * math.pi)
        if label == "circle":
            draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fg)
        else:
            draw.polygon(_polygon(label, cx, cy, radius, angle), fill=fg)
    small = np.asarray(image.resize((size, size), Image.Resampling.BOX), dtype=np.float32)
    noise = rng.normal(0, rng.uniform(0, 18), small.shape)
    return np.clip(small + noise, 0, 255).astype(np.uint8)


def _background(rng: np.random.Generator, big: int) -> np.ndarray:
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, big, dtype=np.float32)
    ramp = t[:, None] if rng.random() < 0.5 else t[None, :]
    grad = a[None, None, :] * (1 - ramp[..., None]) + b[None, None, :] * ramp[..., None]
    return np.broadcast_to(grad, (big, big, 3)).astype(np.uint8)


def _contrasting_colour(rng: np.random.Generator, mean: np.ndarray) -> tuple[int, int, int]:
    for _ in range(20):
        colour = rng.integers(0, 256, 3)
        if np.abs(colour - mean).sum() > 150:
            break
    return int(colour[0]), int(colour[1]), int(colour[2])


def _polygon(label: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if label == "square":
        radii, n = [r] * 4, 4
    elif label == "triangle":
        radii, n = [r * 1.15] * 3, 3
    else:  # star
        radii, n = [r * 1.1 if i % 2 == 0 else r * 0.45 for i in range(10)], 10
    return [
        (cx + radii[i] * math.cos(angle + 2 * math.pi * i / n), cy + radii[i] * math.sin(angle + 2 * math.pi * i / n))
        for i in range(n)
    ]


def _stripes(draw, rng: np.random.Generator, big: int, fg: tuple[int, int, int]) -> None:  # type: ignore[no-untyped-def]
    period = big * rng.uniform(0.1, 0.25)
    width = period * rng.uniform(0.35, 0.6)
    angle = rng.uniform(0, math.pi)
    dx, dy = math.cos(angle), math.sin(angle)
    half = big * 1.5
    c = big / 2
    k = -half
    while k < half:
        # a long thin rectangle perpendicular to (dx, dy), offset k along it
        ox, oy = c + dx * k, c + dy * k
        px, py = -dy * half, dx * half
        draw.polygon(
            [
                (ox + px, oy + py),
                (ox - px, oy - py),
                (ox - px + dx * width, oy - py + dy * width),
                (ox + px + dx * width, oy + py + dy * width),
            ],
            fill=fg,
        )
        k += period


def write_demo_dataset(
    root: str | os.PathLike[str],
    *,
    per_class: int = 120,
    size: int = 64,
    seed: int = 0,
    classes: Sequence[str] = DEMO_CLASSES,
) -> Path:
    """Write a folder-per-class PNG dataset of the demo ``classes`` under ``root`` and return ``root``."""
    from PIL import Image

    out = Path(root)
    rng = np.random.default_rng(seed)
    for label in classes:
        folder = out / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(render(label, rng, size=size)).save(folder / f"{label}_{i:04d}.png")
    return out


def demo_frames(*, height: int = 480, width: int = 640, seed: int = 0) -> Iterator[tuple[str, np.ndarray]]:
    """Endless (label, RGB frame) pairs at camera size, cycling through the demo classes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    while True:
        for label in DEMO_CLASSES:
            tile = render(label, rng, size=min(height, width) // 2)
            yield label, np.asarray(Image.fromarray(tile).resize((width, height), Image.Resampling.BILINEAR))
