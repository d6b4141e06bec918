"""Input x gradient through Captum: the first-order contribution of every input pixel to the latent."""

from __future__ import annotations

import torch

from cafe_core.protocols import Attribution, RunContext, TargetFunction

from .functions import latent_function, to_attribution

__all__ = ["InputXGradient"]


class InputXGradient:
    """Heatmap of ``x * dz/dx`` summed over channels and within each patch.

    Computed with :class:`captum.attr.InputXGradient`; the same quantity as the baselines plugin's
    ``gradient_x_input`` (without its ``absolute`` option), kept so that a table of Captum methods is
    computed by one library. It equals integrated gradients from a zero blank wherever ``z`` is linear
    in ``x`` along the path.

    Notes
    -----
    One forward and backward pass per chunk of at most ``context.batch_size`` rows.
    """

    needs_grad = True
    conserves_relevance = False

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
        from captum.attr import InputXGradient as CaptumInputXGradient

        contributions = []
        for rows in context.chunks(len(x)):
            method = CaptumInputXGradient(latent_function(target.select(rows)))
            contributions.append(method.attribute(x[rows].detach().clone().requires_grad_(True)).detach())
        return to_attribution(torch.cat(contributions), target.backbone.patch_size)
