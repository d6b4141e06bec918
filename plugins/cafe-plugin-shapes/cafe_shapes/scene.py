"""One scene: a label drawn first, objects sampled to match it, placed without overlap and drawn."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .draw import PALETTE, background, side_range, stamp
from .rules import RULES

__all__ = ["GAP", "Scene", "generate_scene", "scene_label"]

GAP = 1
"""Fewest background pixels between the boxes of two objects."""

_CANDIDATES = 64
_ATTEMPTS = 200


@dataclass
class Scene:
    """A generated image with its ground truth.

    Attributes
    ----------
    image : np.ndarray
        Float32 ``[H, W, 3]`` RGB in ``[0, 1]``.
    mask : np.ndarray
        Int64 ``[H, W]``: 0 on the background, ``k + 1`` on the pixels of ``objects[k]``.
    label : int
        The class under the scene's rule.
    objects : list of dict
        One record per object, with keys ``shape`` and ``colour`` (names), ``side`` (side of the square box
        the shape is inscribed in), ``bbox`` (``(top, left, bottom, right)``, the tight box of its pixels,
        bottom and right exclusive), ``centre`` (``(row, col)``, the mean index of its pixels) and
        ``area`` (its number of pixels).
    deciding : list of int
        Indices into ``objects`` of the objects that decide the label; empty when none is needed to
        explain it (e.g. label 0 of ``red_and_triangle``).
    """

    image: np.ndarray
    mask: np.ndarray
    label: int
    objects: list[dict[str, Any]] = field(default_factory=list)
    deciding: list[int] = field(default_factory=list)


@functools.lru_cache(maxsize=None)
def _footprint(shape: str, side: int) -> tuple[tuple[int, int, int, int], tuple[float, float], int]:
    """Tight box, centroid and area of a stamp, relative to its box."""
    covered = stamp(shape, side)
    rows, cols = np.nonzero(covered)
    box = (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)
    return box, (float(rows.mean()), float(cols.mean())), int(covered.sum())


def _place(rng: np.random.Generator, n: int, image_size: int) -> list[tuple[int, int, int]]:
    """``(top, left, side)`` of ``n`` boxes inside the image, pairwise at least :data:`GAP` apart.

    Rejection sampling: each box tries a batch of random positions at once and takes the first that keeps
    clear of the boxes already placed; when none does, the whole layout (sides included) is drawn again.
    """
    low, high = side_range(image_size)
    for _ in range(_ATTEMPTS):
        placed: list[tuple[int, int, int]] = []
        for side in rng.integers(low, high + 1, n):
            side = int(side)
            tops = rng.integers(0, image_size - side + 1, _CANDIDATES)
            lefts = rng.integers(0, image_size - side + 1, _CANDIDATES)
            if placed:
                p_top, p_left, p_side = np.array(placed).T
                apart = (
                    (tops[:, None] >= p_top + p_side + GAP)
                    | (p_top >= tops[:, None] + side + GAP)
                    | (lefts[:, None] >= p_left + p_side + GAP)
                    | (p_left >= lefts[:, None] + side + GAP)
                ).all(axis=1)
                if not apart.any():
                    break
                pick = int(np.argmax(apart))
            else:
                pick = 0
            placed.append((int(tops[pick]), int(lefts[pick]), side))
        else:
            return placed
    raise RuntimeError(f"could not place {n} objects in a {image_size}x{image_size} image; use fewer objects")


def scene_label(seed: int, index: int, num_classes: int) -> int:
    """The label of scene ``index``: uniform, and balanced exactly within each block of ``num_classes``.

    Consecutive indices are grouped in blocks of ``num_classes``; each block's labels are a random
    permutation of the classes, drawn from a stream (``SeedSequence(seed, spawn_key=(block,))``) apart from
    the scenes' own, so that any dataset whose size is a multiple of ``num_classes`` is exactly balanced.
    """
    block, slot = divmod(index, num_classes)
    order = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(block,))).permutation(num_classes)
    return int(order[slot])


def generate_scene(
    seed: int,
    index: int,
    image_size: int = 32,
    rule: str = "red_and_triangle",
    min_objects: int = 2,
    max_objects: int = 4,
) -> Scene:
    """Generate scene ``index`` of the stream seeded by ``seed``.

    The scene depends only on its arguments. Its label is drawn first (see :func:`scene_label`); the rest
    comes from a numpy generator seeded with ``SeedSequence((seed, index))``: the number of objects
    (uniformly in ``[min_objects, max_objects]``), their shapes and colours conditioned on the label, their
    boxes, and the background.

    Parameters
    ----------
    seed, index : int
        Non-negative integers naming the scene.
    image_size : int
        Side of the square image in pixels.
    rule : str
        A key of :data:`cafe_shapes.rules.RULES`.
    min_objects, max_objects : int
        Bounds on the number of objects (inclusive).

    Returns
    -------
    Scene
    """
    chosen = RULES[rule]
    label = scene_label(seed, index, chosen.num_classes)
    rng = np.random.default_rng(np.random.SeedSequence((seed, index)))
    n = int(rng.integers(min_objects, max_objects + 1))
    shapes, colours = chosen.sample(rng, label, n)
    boxes = _place(rng, n, image_size)
    image = background(rng, image_size)
    mask = np.zeros((image_size, image_size), dtype=np.int64)
    objects = []
    for k, (shape, colour, (top, left, side)) in enumerate(zip(shapes, colours, boxes)):
        covered = stamp(shape, side)
        image[top : top + side, left : left + side][covered] = PALETTE[colour]
        mask[top : top + side, left : left + side][covered] = k + 1
        (r0, c0, r1, c1), (cy, cx), area = _footprint(shape, side)
        objects.append(
            {
                "shape": shape,
                "colour": colour,
                "side": side,
                "bbox": (top + r0, left + c0, top + r1, left + c1),
                "centre": (top + cy, left + cx),
                "area": area,
            }
        )
    if chosen.label(shapes, colours) != label:
        raise AssertionError(f"rule {rule!r} sampled objects {list(zip(shapes, colours))} off label {label}")
    return Scene(image=image, mask=mask, label=label, objects=objects, deciding=chosen.deciding(shapes, colours))
