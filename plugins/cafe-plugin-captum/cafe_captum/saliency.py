"""Saliency: the magnitude of the latent's gradient with respect to every input pixel."""

from __future__ import annotations

import torch

from cafe_core.protocols import Attribution, RunContext, TargetFunction

from cafe_core.gradients import input_gradients

from .functions import to_attribution

__all__ = ["Saliency"]


class Saliency:
    """Heatmap of ``|dz/dx|`` (or ``dz/dx``) summed over channels and within each patch.

    What :class:`captum.attr.Saliency` computes (the tests compare the two), through cafe's shared-gradient
    path (:func:`cafe_core.gradients.input_gradients`), so that the latents of one image share one forward
    pass and a batched backward pass. The gradient says how sensitive ``z`` is to each pixel, not how much
    each pixel contributes, so the heatmap neither sums to ``z`` nor depends on the pixel values except
    through the gradient.

    Parameters
    ----------
    abs : bool
        Take the absolute value of the gradient element-wise before summing (Captum's default).
    batching : {"auto", "rows", "shared", "jacobian"}
        How rows that explain several latents of one image share work; every choice gives the same maps.

    Notes
    -----
    Rows of distinct images take one forward and backward pass per chunk of at most ``context.batch_size``
    rows.
    """

    needs_grad = True
    conserves_relevance = False

    def __init__(self, abs: bool = True, batching: str = "auto") -> None:  # noqa: A002 - Captum's name
        self.abs = bool(abs)
        self.batching = batching

    def attribute(self, target: TargetFunction, x: torch.Tensor, context: RunContext) -> Attribution:
        """Saliency maps of the rows of ``x [B, 3, H, W]``.

        Parameters
        ----------
        target : TargetFunction
            The latent and token of each row.
        x : torch.Tensor
            Model inputs ``[B, 3, H, W]``.
        context : RunContext
            ``batch_size`` bounds the images per forward/backward pass.

        Returns
        -------
        Attribution
            ``heatmap [B, gh, gw]`` and ``pixels [B, H, W]`` (summed over channels).
        """
        gradients = input_gradients(target, x, context, batching=self.batching).inputs
        return to_attribution(gradients.abs() if self.abs else gradients, target.backbone.patch_size)
