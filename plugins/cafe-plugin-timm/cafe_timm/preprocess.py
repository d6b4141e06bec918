"""Turning PIL images or ``[3, H, W]`` tensors in ``[0, 1]`` into normalised model inputs."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from timm.data import create_transform, resolve_data_config

from .errors import TimmBackboneError

__all__ = ["ImagePreprocessor"]

# Tolerance on the [0, 1] range of tensor inputs (decoding and earlier resizing may overshoot slightly).
_RANGE_TOL = 1e-3


class ImagePreprocessor:
    """A model's evaluation transform for PIL images, and resizing plus normalisation for tensors.

    Parameters
    ----------
    image_size : tuple of int
        ``(H, W)`` of the outputs.
    mean, std : sequence of float
        Per-channel normalisation constants (``x_model = (x - mean) / std``).
    pil_transform : callable
        The library's evaluation transform: a PIL image (RGB) to a normalised ``[3, H, W]`` tensor.

    Attributes
    ----------
    mean, std : torch.Tensor
        ``[3, 1, 1]`` float32 normalisation constants.
    """

    def __init__(
        self,
        image_size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        pil_transform: Callable[[Any], torch.Tensor],
    ) -> None:
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.mean = torch.tensor([float(m) for m in mean], dtype=torch.float32).reshape(3, 1, 1)
        self.std = torch.tensor([float(s) for s in std], dtype=torch.float32).reshape(3, 1, 1)
        self._pil_transform = pil_transform

    @classmethod
    def for_timm_model(cls, model: torch.nn.Module, image_size: tuple[int, int]) -> "ImagePreprocessor":
        """The evaluation transform of a timm model (its ``pretrained_cfg``: interpolation, crop, mean, std)."""
        image_size = (int(image_size[0]), int(image_size[1]))
        config = resolve_data_config({"input_size": (3, *image_size)}, model=model)
        return cls(image_size, config["mean"], config["std"], create_transform(**config, is_training=False))

    def __call__(self, images: Sequence[Any]) -> torch.Tensor:
        """Preprocess a batch.

        PIL images (any mode, any size) are converted to RGB and go through the evaluation transform (for
        timm models: resize, center crop to ``image_size``, normalise). Tensors ``[3, H, W]`` (or
        ``[1, H, W]``) with values in ``[0, 1]`` are resized to ``image_size`` (bilinear, antialiased) and
        normalised.

        Returns
        -------
        torch.Tensor
            ``[B, 3, H, W]`` float32 on the CPU.
        """
        if isinstance(images, torch.Tensor) and images.dim() == 3:
            images = [images]
        images = list(images)
        if len(images) == 0:
            raise TimmBackboneError("preprocess got no images; pass a non-empty list of PIL images or tensors")
        return torch.stack([self._one(image, i) for i, image in enumerate(images)])

    def _one(self, image: Any, index: int) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            return self._tensor(image, index)
        if hasattr(image, "convert") and hasattr(image, "size"):
            out = self._pil_transform(image.convert("RGB"))
            if tuple(out.shape) != (3, *self.image_size):
                raise TimmBackboneError(
                    f"the evaluation transform made image {index} {tuple(out.shape)}, not (3, {self.image_size[0]}, "
                    f"{self.image_size[1]}); set img_size to the size the model's preprocessing produces"
                )
            return out
        raise TimmBackboneError(
            f"image {index} is a {type(image).__name__}; preprocess accepts PIL images or float tensors "
            "[3, H, W] with values in [0, 1]"
        )

    def _tensor(self, image: torch.Tensor, index: int) -> torch.Tensor:
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise TimmBackboneError(
                f"image {index} has shape {tuple(image.shape)}; tensor images must be [3, H, W] (or [1, H, W] "
                "for grey) with values in [0, 1]"
            )
        if not image.is_floating_point():
            raise TimmBackboneError(
                f"image {index} has dtype {image.dtype}; tensor images must be floats in [0, 1] "
                "(divide 8-bit images by 255)"
            )
        image = image.detach().to(device="cpu", dtype=torch.float32)
        low, high = float(image.min()), float(image.max())
        if low < -_RANGE_TOL or high > 1 + _RANGE_TOL:
            raise TimmBackboneError(
                f"image {index} has values in [{low:.3g}, {high:.3g}]; tensor images must be in [0, 1] before "
                "preprocessing (pass unnormalised images: preprocess normalises them)"
            )
        image = image.expand(3, -1, -1)
        if tuple(image.shape[-2:]) != self.image_size:
            image = F.interpolate(
                image[None], size=self.image_size, mode="bilinear", align_corners=False, antialias=True
            )[0]
        return (image - self.mean) / self.std
