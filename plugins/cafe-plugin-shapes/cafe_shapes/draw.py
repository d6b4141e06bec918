"""Pixels: the colour palette, the shape stamps and the background textures.

Shapes are drawn with hard edges in flat palette colours, and every palette colour has a channel outside
:data:`BACKGROUND_RANGE`, the range background pixels are clipped to. So a pixel has a palette colour if and
only if it belongs to an object, and an object's colour can be read back from its pixels exactly.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .rules import SHAPES

__all__ = ["BACKGROUND_RANGE", "PALETTE", "background", "side_range", "stamp"]

PALETTE: dict[str, np.ndarray] = {
    "red": np.array([0.90, 0.10, 0.10], dtype=np.float32),
    "green": np.array([0.10, 0.80, 0.15], dtype=np.float32),
    "blue": np.array([0.10, 0.20, 0.90], dtype=np.float32),
    "yellow": np.array([0.95, 0.85, 0.10], dtype=np.float32),
}
for _rgb in PALETTE.values():
    _rgb.setflags(write=False)

BACKGROUND_RANGE = (0.25, 0.75)


def side_range(image_size: int) -> tuple[int, int]:
    """Smallest and largest side, in pixels, of an object's square box.

    6 to 10 pixels at 32 pixels, scaled with ``image_size``; never below 4, where a circle would become a
    square.
    """
    low = max(4, round(6 * image_size / 32))
    return low, max(low, round(10 * image_size / 32))


def _cross_arm(side: int) -> int:
    # The arm width closest to a third of the side that centres the arm exactly (same parity as the side).
    return min((t for t in range(1, side + 1) if (side - t) % 2 == 0), key=lambda t: (abs(t - side / 3), t))


@functools.lru_cache(maxsize=None)
def stamp(shape: str, side: int) -> np.ndarray:
    """The pixels a shape covers inside its ``side x side`` box.

    Parameters
    ----------
    shape : str
        One of :data:`cafe_shapes.rules.SHAPES`.
    side : int
        Side of the box in pixels.

    Returns
    -------
    np.ndarray
        Read-only boolean array ``[side, side]``. A pixel is covered when its centre lies inside the shape:
        the full box for a square, the inscribed disc for a circle, the upright isosceles triangle whose
        base is the box's bottom edge and whose apex is the middle of its top edge, and a plus sign whose
        arms span the box and are about a third of the side wide.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    centres = (np.arange(side) + 0.5) / side
    v, u = np.meshgrid(centres, centres, indexing="ij")
    if shape == "square":
        covered = np.ones((side, side), dtype=bool)
    elif shape == "circle":
        covered = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    elif shape == "triangle":
        covered = np.abs(u - 0.5) <= v / 2
    else:
        arm = _cross_arm(side)
        band = np.zeros(side, dtype=bool)
        band[(side - arm) // 2 : (side + arm) // 2] = True
        covered = band[:, None] | band[None, :]
    covered.setflags(write=False)
    return covered


@functools.lru_cache(maxsize=None)
def _upsampler(image_size: int, cells: int) -> np.ndarray:
    """Bilinear interpolation matrix ``[image_size, cells]`` from a coarse grid to pixel centres."""
    position = np.clip((np.arange(image_size) + 0.5) * cells / image_size - 0.5, 0, cells - 1)
    below = np.minimum(np.floor(position).astype(int), cells - 2)
    frac = position - below
    matrix = np.zeros((image_size, cells))
    rows = np.arange(image_size)
    matrix[rows, below] = 1 - frac
    matrix[rows, below + 1] = frac
    return matrix


@functools.lru_cache(maxsize=None)
def _grid(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.meshgrid(np.arange(image_size) + 0.5, np.arange(image_size) + 0.5, indexing="ij")
    return y, x


def background(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """A low-contrast random texture.

    Half of the backgrounds are stripes of random orientation, period, phase and colour, the other half
    smooth noise (a coarse random grid of 3 to 6 cells a side, upsampled bilinearly), both around a random
    greyish base colour and with a little per-pixel noise.

    Parameters
    ----------
    rng : np.random.Generator
        Source of randomness.
    image_size : int
        Side of the image in pixels.

    Returns
    -------
    np.ndarray
        Float32 array ``[image_size, image_size, 3]`` with values in :data:`BACKGROUND_RANGE`.
    """
    base = rng.uniform(0.4, 0.6, 3)
    if rng.random() < 0.5:
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(3, 8) * image_size / 32
        phase = rng.uniform(0, 2 * math.pi)
        tint = rng.uniform(-0.12, 0.12, 3)
        y, x = _grid(image_size)
        wave = 0.5 + 0.5 * np.sin(2 * math.pi * (x * math.cos(angle) + y * math.sin(angle)) / period + phase)
        texture = base + wave[..., None] * tint
    else:
        cells = int(rng.integers(3, 7))
        coarse = rng.normal(0.0, 0.07, (cells, cells, 3))
        up = _upsampler(image_size, cells)
        texture = base + (up @ coarse.transpose(2, 0, 1) @ up.T).transpose(1, 2, 0)
    texture += rng.normal(0.0, 0.015, (image_size, image_size, 3))
    return np.clip(texture, *BACKGROUND_RANGE).astype(np.float32)
