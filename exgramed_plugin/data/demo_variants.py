"""The deterministic variants of a demo source image: drawing, rendering and describing them.

Why its own module: the demo data (:mod:`exgramed_plugin.data.demo_data`) needs several distinct
images per source, identical on every machine. A variant is a derivation (rotation in integer
degrees, square crop, optional left-right mirror) drawn from a caller's seeded
``numpy.random.Generator`` (never a global RNG) as plain ints/bools, so ``sources.json`` records it
exactly; ``{}`` is the whole image, only resized.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["describe_variant", "draw_derivation", "render"]


def draw_derivation(rng: np.random.Generator, width: int, height: int) -> dict[str, Any]:
    """Draw rotation + square crop + mirror; plain ints/bools so sources.json records it exactly."""
    short = min(width, height)
    side = int(rng.integers(int(0.6 * short), int(0.9 * short) + 1))
    left = int(rng.integers(0, width - side + 1))
    top = int(rng.integers(0, height - side + 1))
    return {
        "rotate_degrees": int(rng.integers(-10, 11)),
        "crop_box": [left, top, left + side, top + side],
        "mirror_left_right": bool(rng.integers(0, 2)),
    }


def _resize_short_side(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    return image.resize(new_size, resample=Image.Resampling.LANCZOS)


def render(image: Image.Image, derivation: dict[str, Any], size: int) -> Image.Image:
    """Apply a derivation and resize so the short side is ``size``.

    The rotation is about the crop centre and is done at twice the output resolution on a padded
    crop only (rotating a 2000 px radiograph at full resolution would cost ~0.1 s per variant).
    """
    if not derivation:
        return _resize_short_side(image, size)
    left, top, right, bottom = derivation["crop_box"]
    side = right - left
    work = 2 * size
    out: Image.Image
    if derivation["rotate_degrees"]:
        pad = math.ceil(side * (math.sqrt(2.0) - 1.0) / 2.0) + 2  # room for the rotated corners
        region = image.crop((left - pad, top - pad, right + pad, bottom + pad))  # black outside
        scaled = round((side + 2 * pad) * work / side)
        region = region.resize((scaled, scaled), resample=Image.Resampling.LANCZOS)
        region = region.rotate(
            derivation["rotate_degrees"], resample=Image.Resampling.BICUBIC, fillcolor=(0, 0, 0)
        )
        offset = (scaled - work) // 2
        out = region.crop((offset, offset, offset + work, offset + work))
    else:
        out = image.crop((left, top, right, bottom)).resize(
            (work, work), resample=Image.Resampling.LANCZOS
        )
    if derivation["mirror_left_right"]:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return out.resize((size, size), resample=Image.Resampling.LANCZOS)


def describe_variant(derivation: dict[str, Any]) -> str:
    """The variant part of an extended answer; keeps the extended answers of variants distinct."""
    if not derivation:
        return "This view shows the whole image."
    parts = ["This view is a square crop of the image"]
    if derivation["rotate_degrees"]:
        parts.append(f", rotated by {derivation['rotate_degrees']} degrees")
    if derivation["mirror_left_right"]:
        parts.append(", mirrored left to right")
    return "".join(parts) + "."
