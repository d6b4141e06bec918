"""Parameters of the shapes dataset (imports nothing heavy)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .rules import RULES

__all__ = ["MAX_OBJECTS", "ObjectHitParams", "RuleName", "ShapesParams"]

MAX_OBJECTS = 6
"""Most objects a scene may hold: six always fit, without overlap, in the smallest (16 pixel) image."""

RuleName = Literal["red_and_triangle", "same_colour_pair"]


class ShapesParams(BaseModel):
    """Parameters of :class:`cafe_shapes.dataset.ShapesDataset`.

    Attributes
    ----------
    size : int
        Number of images.
    seed : int
        Seed of the image stream; image ``i`` depends only on ``(seed, i)``.
    image_size : int
        Side of the square images in pixels (at least 16).
    rule : str
        The labelling rule: ``"red_and_triangle"`` (4 classes) or ``"same_colour_pair"`` (2 classes).
    min_objects, max_objects : int
        Bounds, inclusive, on the number of objects in an image.
    """

    model_config = ConfigDict(extra="forbid")

    size: int = Field(1000, ge=1)
    seed: int = Field(0, ge=0)
    image_size: int = Field(32, ge=16)
    rule: RuleName = "red_and_triangle"
    min_objects: int = Field(2, ge=1, le=MAX_OBJECTS)
    max_objects: int = Field(4, ge=1, le=MAX_OBJECTS)

    @model_validator(mode="after")
    def _object_counts(self) -> "ShapesParams":
        if self.min_objects > self.max_objects:
            raise ValueError(f"min_objects ({self.min_objects}) exceeds max_objects ({self.max_objects})")
        rule = RULES[self.rule]
        if self.min_objects < rule.min_objects:
            raise ValueError(f"rule {self.rule!r} needs min_objects >= {rule.min_objects}, got {self.min_objects}")
        if rule.max_objects is not None and self.max_objects > rule.max_objects:
            raise ValueError(
                f"rule {self.rule!r} needs max_objects <= {rule.max_objects} (every label must stay possible), "
                f"got {self.max_objects}"
            )
        return self


class ObjectHitParams(BaseModel):
    """Parameters of :class:`cafe_shapes.ground_truth.ObjectHit`.

    Attributes
    ----------
    top_k : int
        How many of the most relevant patches to check.
    objects : {"deciding", "any"}
        The objects that decided the label, or every object.
    """

    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(1, ge=1)
    objects: Literal["deciding", "any"] = "deciding"
