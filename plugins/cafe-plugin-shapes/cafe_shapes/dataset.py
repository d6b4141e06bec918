"""The ``shapes`` dataset: random access to generated scenes as cafe image items or training tensors."""

from __future__ import annotations

import operator
from typing import Iterator

import numpy as np
import torch

from cafe_core.protocols import ImageItem

from .rules import RULES, Rule
from .scene import Scene, generate_scene

__all__ = ["ShapesDataset"]


class ShapesDataset:
    """Images of 1 to 6 coloured shapes on a textured background, labelled by a known rule.

    Item ``i`` depends only on ``(seed, i)`` (not on ``size``), so any item is generated on demand in
    constant time and the dataset of size ``n`` is a prefix of the one of size ``n + 1``. The parameters are
    checked by :class:`cafe_shapes.params.ShapesParams` (a run spec validates them before building the
    dataset), not here.

    Parameters
    ----------
    size : int
        Number of images.
    seed : int
        Seed of the image stream.
    image_size : int
        Side of the square images in pixels (at least 16).
    rule : str
        ``"red_and_triangle"``: label ``2 * [a red shape is present] + [a triangle is present]``;
        ``"same_colour_pair"``: label ``[two objects share a colour]``.
    min_objects, max_objects : int
        Bounds, inclusive, on the number of objects in an image.

    Notes
    -----
    An item's ``image`` is a float32 tensor ``[3, H, W]`` with values in ``[0, 1]``, its ``image_id`` is
    ``"shapes-{seed}-{i:06d}"``, and its ``info`` holds ``label`` (int), ``objects`` (list of dict),
    ``mask`` (int64 array ``[H, W]``, 0 on the background and ``k + 1`` on object ``k``) and ``deciding``
    (indices of the objects that decide the label); see :class:`cafe_shapes.scene.Scene`.
    """

    def __init__(
        self,
        size: int = 1000,
        seed: int = 0,
        image_size: int = 32,
        rule: str = "red_and_triangle",
        min_objects: int = 2,
        max_objects: int = 4,
    ) -> None:
        self.size = size
        self.seed = seed
        self.image_size = image_size
        self.rule: Rule = RULES[rule]
        self.min_objects = min_objects
        self.max_objects = max_objects

    @property
    def num_classes(self) -> int:
        """Number of labels of the rule."""
        return self.rule.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        """Name of each label."""
        return self.rule.class_names

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return (
            f"ShapesDataset(size={self.size}, seed={self.seed}, image_size={self.image_size}, "
            f"rule={self.rule.name!r}, min_objects={self.min_objects}, max_objects={self.max_objects})"
        )

    def _position(self, index: int) -> int:
        position = operator.index(index)
        if position < 0:
            position += self.size
        if not 0 <= position < self.size:
            raise IndexError(f"index {index} out of range for a shapes dataset of size {self.size}")
        return position

    def image_id(self, index: int) -> str:
        """The stable id of item ``index``."""
        return f"shapes-{self.seed}-{self._position(index):06d}"

    def scene(self, index: int) -> Scene:
        """Scene ``index`` as numpy arrays (image ``[H, W, 3]``), with its ground truth.

        Parameters
        ----------
        index : int
            Position in the dataset (negative counts from the end).

        Returns
        -------
        Scene
        """
        return generate_scene(
            self.seed,
            self._position(index),
            image_size=self.image_size,
            rule=self.rule.name,
            min_objects=self.min_objects,
            max_objects=self.max_objects,
        )

    def __getitem__(self, index: int) -> ImageItem:
        scene = self.scene(index)
        image = torch.from_numpy(np.ascontiguousarray(scene.image.transpose(2, 0, 1)))
        info = {"label": scene.label, "objects": scene.objects, "mask": scene.mask, "deciding": scene.deciding}
        return ImageItem(image_id=self.image_id(index), image=image, info=info)

    def __iter__(self) -> Iterator[ImageItem]:
        for index in range(self.size):
            yield self[index]

    def tensors(self, start: int = 0, stop: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Items ``start`` to ``stop`` (exclusive) stacked for training.

        Parameters
        ----------
        start : int
            First index, ``0 <= start <= stop``.
        stop : int, optional
            One past the last index, at most ``len(self)`` (default).

        Returns
        -------
        images : torch.Tensor
            Float32 ``[N, 3, H, W]`` in ``[0, 1]``.
        labels : torch.Tensor
            Int64 ``[N]``.
        masks : torch.Tensor
            Int64 ``[N, H, W]``: 0 on the background, ``k + 1`` on object ``k`` of each image.
        """
        stop = self.size if stop is None else stop
        if not 0 <= start <= stop <= self.size:
            raise ValueError(f"need 0 <= start <= stop <= {self.size}, got start={start}, stop={stop}")
        count, side = stop - start, self.image_size
        images = np.empty((count, side, side, 3), dtype=np.float32)
        labels = np.empty(count, dtype=np.int64)
        masks = np.empty((count, side, side), dtype=np.int64)
        for row, index in enumerate(range(start, stop)):
            scene = self.scene(index)
            images[row], labels[row], masks[row] = scene.image, scene.label, scene.mask
        return (
            torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
            torch.from_numpy(labels),
            torch.from_numpy(masks),
        )
