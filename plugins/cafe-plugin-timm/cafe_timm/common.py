"""What every timm backbone shares: the module's device and dtype, moving it, and its preprocessing."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .errors import TimmBackboneError

__all__ = ["TimmModel"]


class TimmModel:
    """Base of the timm backbones: subclasses set ``model`` (the module) and ``_preprocess``."""

    model: torch.nn.Module
    model_name: str
    image_size: tuple[int, int]

    # Device -----------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """Where the model parameters live."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Floating point type of the model parameters (and of :meth:`preprocess` outputs)."""
        return next(p.dtype for p in self.model.parameters() if p.is_floating_point())

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "TimmModel":
        """Move the model to ``device`` and/or cast it to the floating point ``dtype``; returns ``self``."""
        if dtype is not None and not dtype.is_floating_point:
            raise TimmBackboneError(f"dtype must be a floating point type such as torch.float32, got {dtype}")
        self.model.to(device=device, dtype=dtype)
        return self

    @property
    def mean(self) -> torch.Tensor:
        """``[3, 1, 1]`` normalisation mean, on the model's device and dtype."""
        return self._preprocess.mean.to(self.device, self.dtype)

    @property
    def std(self) -> torch.Tensor:
        """``[3, 1, 1]`` normalisation std: model inputs are ``(pixels - mean) / std``."""
        return self._preprocess.std.to(self.device, self.dtype)

    # Computation -----------------------------------------------------------------------------------------

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        """Model inputs ``[B, 3, H, W]`` of PIL images or ``[3, H, W]`` tensors in ``[0, 1]``.

        PIL images (any mode and size) are converted to RGB, resized and center-cropped to ``image_size`` with
        the model's pretrained evaluation transform, then normalised. Tensors are resized to ``image_size``
        (bilinear, antialiased) and normalised with the same ``mean`` and ``std``.
        """
        return self._preprocess(images).to(self.device, self.dtype)

    def _check_input(self, x: torch.Tensor) -> None:
        """Refuse anything but images ``[B, 3, H, W]`` of the backbone's input size, saying how to fix it."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise TimmBackboneError(
                f"forward_to expects images [B, 3, H, W], got {shape}; build the input with preprocess(images)"
            )
        if tuple(x.shape[-2:]) != self.image_size:
            raise TimmBackboneError(
                f"input images are {tuple(x.shape[-2:])} but {self.model_name!r} expects {self.image_size}; "
                "resize them with preprocess(images), or build the backbone with img_size matching the images"
            )
