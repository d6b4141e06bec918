"""The activation map: a latent's value at every patch token, the naive view of where it lives."""

from __future__ import annotations

import torch

from cafe_core.protocols import Attribution, RunContext, TargetFunction

__all__ = ["ActivationMap"]


class ActivationMap:
    """Heatmap of latent ``z_n`` read at each patch token.

    For row ``b`` explaining latent ``n`` at some token, ``heatmap[b, r, c]`` is ``z_n`` of the SAE applied
    to the patch token of grid cell ``(r, c)`` at the same layer. One forward pass to that layer, no
    gradients. The target's own position plays no part in the heatmap.

    This shows where a latent *fires*, not which input patches *cause* it. For a target on the class token
    (or a register token) the map still shows ``z_n`` at the patch tokens; a latent that lives on the class
    token is usually close to zero at every patch token, so the map is blank although the latent is active.
    A causal attribution from the target token back to the input does not have this blind spot.

    ``info["z"]`` holds the latent at the target token itself, to contrast with the map.
    """

    needs_grad = False
    conserves_relevance = False

    def attribute(self, target: TargetFunction, x: torch.Tensor, context: RunContext) -> Attribution:
        """Activation maps ``[B, gh, gw]`` of the rows of ``x [B, 3, H, W]``.

        Parameters
        ----------
        target : TargetFunction
            Row ``b`` names the latent to map; its token position is used only for ``info["z"]``.
        x : torch.Tensor
            Model inputs ``[B, 3, H, W]``.
        context : RunContext
            ``batch_size`` bounds the images per forward pass.

        Returns
        -------
        Attribution
            The maps as ``heatmap`` and the latent at the target token as ``info["z"]``.
        """
        backbone, sae = target.backbone, target.sae
        gh, gw = backbone.grid_size
        n_prefix = len(backbone.prefix_tokens)
        n_patches = gh * gw
        maps, zs = [], []
        with torch.no_grad():
            for chunk in context.chunks(len(x)):
                rows = target.select(chunk)
                h = rows.tokens(x[chunk])
                if h.shape[1] != n_prefix + n_patches:
                    raise ValueError(
                        f"backbone returned {h.shape[1]} tokens, expected {n_prefix} prefix tokens + "
                        f"{gh}x{gw} patch tokens"
                    )
                b = h.shape[0]
                patches = h[:, n_prefix:].reshape(b * n_patches, h.shape[-1])
                latents = rows.latents.to(h.device).repeat_interleave(n_patches)
                maps.append(sae.encode_latents(patches, latents).reshape(b, gh, gw))
                zs.append(rows.from_tokens(h))
        return Attribution(heatmap=torch.cat(maps), info={"z": torch.cat(zs)})
