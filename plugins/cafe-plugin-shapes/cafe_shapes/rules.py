"""Labelling rules: how a label is sampled into a scene's objects, and read back from them.

A rule knows nothing about pixels. It works on the shape and colour names of a scene's objects, in order,
and is pure Python so that the parameter model can check object counts against it without importing numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

__all__ = ["COLOURS", "RULES", "SHAPES", "Rule"]

SHAPES = ("square", "circle", "triangle", "cross")
COLOURS = ("red", "green", "blue", "yellow")

Names = Sequence[str]


@dataclass(frozen=True)
class Rule:
    """A labelling rule.

    Attributes
    ----------
    name : str
        The value of the dataset's ``rule`` parameter.
    description : str
        One sentence stating the rule.
    class_names : tuple of str
        Name of each label, indexed by label.
    min_objects : int
        Fewest objects a scene needs for every label to be possible.
    max_objects : int or None
        Most objects a scene may hold for every label to be possible (``None``: no limit).
    sample : callable
        ``sample(rng, label, n) -> (shapes, colours)``: the names of ``n`` objects, drawn with the numpy
        generator ``rng`` so that the scene has label ``label``.
    label : callable
        ``label(shapes, colours) -> int``: the label of a scene.
    deciding : callable
        ``deciding(shapes, colours) -> list of int``: indices of the objects that decide the label.
    """

    name: str
    description: str
    class_names: tuple[str, ...]
    min_objects: int
    max_objects: int | None
    sample: Callable[[Any, int, int], tuple[list[str], list[str]]]
    label: Callable[[Names, Names], int]
    deciding: Callable[[Names, Names], list[int]]

    @property
    def num_classes(self) -> int:
        """Number of labels."""
        return len(self.class_names)


def _pick(rng: Any, options: Sequence[str], n: int) -> list[str]:
    return [options[k] for k in rng.integers(0, len(options), n)]


def _red_and_triangle_sample(rng: Any, label: int, n: int) -> tuple[list[str], list[str]]:
    red, triangle = divmod(label, 2)
    colours = _pick(rng, COLOURS if red else [c for c in COLOURS if c != "red"], n)
    if red:
        colours[int(rng.integers(n))] = "red"
    shapes = _pick(rng, SHAPES if triangle else [s for s in SHAPES if s != "triangle"], n)
    if triangle:
        shapes[int(rng.integers(n))] = "triangle"
    return shapes, colours


def _red_and_triangle_label(shapes: Names, colours: Names) -> int:
    return 2 * int("red" in colours) + int("triangle" in shapes)


def _red_and_triangle_deciding(shapes: Names, colours: Names) -> list[int]:
    return [i for i, (s, c) in enumerate(zip(shapes, colours)) if c == "red" or s == "triangle"]


def _same_colour_pair_sample(rng: Any, label: int, n: int) -> tuple[list[str], list[str]]:
    if label:
        colours = _pick(rng, COLOURS, n)
        first, second = (int(k) for k in rng.choice(n, 2, replace=False))
        colours[second] = colours[first]
    else:
        colours = [COLOURS[k] for k in rng.permutation(len(COLOURS))[:n]]
    return _pick(rng, SHAPES, n), colours


def _same_colour_pair_label(shapes: Names, colours: Names) -> int:
    return int(len(set(colours)) < len(colours))


def _same_colour_pair_deciding(shapes: Names, colours: Names) -> list[int]:
    return [i for i, c in enumerate(colours) if list(colours).count(c) > 1]


RULES: dict[str, Rule] = {
    "red_and_triangle": Rule(
        name="red_and_triangle",
        description="label = 2 * [a red shape is present] + [a triangle is present]",
        class_names=("no red, no triangle", "triangle, no red", "red, no triangle", "red and triangle"),
        min_objects=1,
        max_objects=None,
        sample=_red_and_triangle_sample,
        label=_red_and_triangle_label,
        deciding=_red_and_triangle_deciding,
    ),
    "same_colour_pair": Rule(
        name="same_colour_pair",
        description="label = [two objects share a colour]",
        class_names=("all colours differ", "a colour repeats"),
        min_objects=2,
        max_objects=len(COLOURS),
        sample=_same_colour_pair_sample,
        label=_same_colour_pair_label,
        deciding=_same_colour_pair_deciding,
    ),
}
