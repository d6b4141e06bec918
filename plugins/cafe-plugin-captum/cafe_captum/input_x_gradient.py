"""Input x gradient through Captum: the first-order contribution of every input pixel to the latent."""

from __future__ import annotations

import torch

from cafe_core.protocols import Attribution, RunContext, TargetFunction

from cafe_core.gradients import input_gradients

from .functions import to_attribution

__all__ = ["InputXGradient"]


class InputXGradient:
    """Heatmap of ``x * dz/dx`` summed over channels and within each patch.

    What :class:`captum.attr.InputXGradient` computes (the tests compare the two), through cafe's
    shared-gradient path (:func:`cafe_core.gradients.input_gradients`): the same quantity as the baselines
    plugin's ``gradient_x_input`` (without its ``absolute`` option), kept so that a table of Captum's methods
    has every one of them. It equals integrated gradients from a zero blank wherever ``z`` is linear in ``x``
    along the path.

    Parameters
    ----------
    batching : {"auto", "rows", "shared", "jacobian"}
        How rows that explain several latents of one image share work; every choice gives the same maps.

    Notes
    -----
    Rows of distinct images take one forward and backward pass per chunk of at most ``context.batch_size``
    rows; the latents of one image share one forward pass and a batched backward pass.
    """

    needs_grad = True
    conserves_relevance = False

    def __init__(self, batching: str = "auto") -> None:
        self.batching = batching

    def attribute(self, target: TargetFunction, x: torch.Tensor, context: RunContext) -> Attribution:
        """Input x gradient maps of the rows of ``x [B, 3, H, W]``.

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
        return to_attribution(x.detach() * gradients, target.backbone.patch_size)
