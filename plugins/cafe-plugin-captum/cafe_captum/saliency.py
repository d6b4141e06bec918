"""Saliency: the magnitude of the latent's gradient with respect to every input pixel."""

from __future__ import annotations

import torch

from cafe_core.protocols import Attribution, RunContext, TargetFunction

from .functions import latent_function, to_attribution

__all__ = ["Saliency"]


class Saliency:
    """Heatmap of ``|dz/dx|`` (or ``dz/dx``) summed over channels and within each patch.

    Computed with :class:`captum.attr.Saliency`. The gradient says how sensitive ``z`` is to each pixel, not
    how much each pixel contributes, so the heatmap neither sums to ``z`` nor depends on the pixel values
    except through the gradient.

    Parameters
    ----------
    abs : bool
        Take the absolute value of the gradient element-wise before summing (Captum's default).

    Notes
    -----
    One forward and backward pass per chunk of at most ``context.batch_size`` rows.
    """

    needs_grad = True
    conserves_relevance = False

    def __init__(self, abs: bool = True) -> None:  # noqa: A002 - Captum's name for the option
        self.abs = bool(abs)

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
        from captum.attr import Saliency as CaptumSaliency

        grads = []
        for rows in context.chunks(len(x)):
            method = CaptumSaliency(latent_function(target.select(rows)))
            grads.append(method.attribute(x[rows].detach().clone().requires_grad_(True), abs=self.abs).detach())
        return to_attribution(torch.cat(grads), target.backbone.patch_size)
