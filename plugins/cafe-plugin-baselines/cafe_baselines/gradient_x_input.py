"""Gradient x input: the first-order Taylor contribution of every input pixel to the latent."""

from __future__ import annotations

import torch

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

    Notes
    -----
    Each chunk of ``context.batch_size`` rows takes one backward pass of ``z.sum()`` with respect to a
    fresh leaf copy of the input only (rows are independent, so the sum separates them). No gradient is
    accumulated on model parameters and no hook is installed.
    """

    needs_grad = True
    conserves_relevance = False

    def __init__(self, absolute: bool = False) -> None:
        self.absolute = bool(absolute)

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
        patch_size = target.backbone.patch_size
        pixel_maps, zs = [], []
        for chunk in context.chunks(len(x)):
            rows = target.select(chunk)
            leaf = x[chunk].detach().clone().requires_grad_(True)
            with torch.enable_grad():
                z = rows(leaf)
                (grad,) = torch.autograd.grad(z.sum(), leaf)
            contribution = leaf.detach() * grad
            if self.absolute:
                contribution = contribution.abs()
            pixel_maps.append(contribution.sum(dim=1))
            zs.append(z.detach())
        pixels = torch.cat(pixel_maps)
        return Attribution(
            heatmap=pixels_to_patches(pixels, patch_size), pixels=pixels, info={"z": torch.cat(zs)}
        )
