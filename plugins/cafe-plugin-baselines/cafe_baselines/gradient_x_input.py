"""Gradient x input: the first-order Taylor contribution of every input pixel to the latent."""

from __future__ import annotations

import torch

from cafe_core.gradients import input_gradients
from cafe_core.patches import pixels_to_patches
from cafe_core.protocols import Attribution, RunContext, TargetFunction

__all__ = ["GradientXInput"]


class GradientXInput:
    """Heatmap of ``x * dz/dx`` summed over channels and within each patch.

    For a model that is linear in its input (no biases) the heatmap sums to ``z`` exactly; for a deep
    network it is a local, first-order view and no completeness holds.

    Parameters
    ----------
    absolute : bool
        Take ``|x * dz/dx|`` element-wise before summing, so that opposite-signed pixels do not cancel.
    batching : {"auto", "rows", "shared", "jacobian"}
        How rows that explain several latents of one image share work (see
        :func:`cafe_core.gradients.input_gradients`); every choice gives the same maps.

    Notes
    -----
    Rows of distinct images take one forward and backward pass per chunk of ``context.batch_size`` rows;
    the latents of one image share one forward pass and a batched backward pass. The gradient is taken
    with respect to a fresh leaf copy of the input only: no gradient reaches the model's parameters and no
    hook is installed.
    """

    needs_grad = True
    conserves_relevance = False

    def __init__(self, absolute: bool = False, batching: str = "auto") -> None:
        self.absolute = bool(absolute)
        self.batching = batching

    def attribute(self, target: TargetFunction, x: torch.Tensor, context: RunContext) -> Attribution:
        """Gradient x input maps of the rows of ``x [B, 3, H, W]``.

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
            ``heatmap [B, gh, gw]``, the pixel map ``pixels [B, H, W]`` (summed over channels) and the
            latent values ``info["z"]``.
        """
        gradients = input_gradients(target, x, context, batching=self.batching)
        contribution = x.detach() * gradients.inputs
        if self.absolute:
            contribution = contribution.abs()
        pixels = contribution.sum(dim=1)
        return Attribution(
            heatmap=pixels_to_patches(pixels, target.backbone.patch_size), pixels=pixels, info={"z": gradients.z}
        )
