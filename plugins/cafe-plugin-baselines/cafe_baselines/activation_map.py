"""The activation map: a latent's value at every patch token, the naive view of where it lives."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from cafe_core.errors import IncompatibleComponentError
from cafe_core.protocols import Attribution, Backbone, RunContext, TargetFunction, layer_grid

__all__ = ["ActivationMap"]


def grid_problem(backbone: Backbone, layer: int) -> str | None:
    """Why the activation map cannot be drawn at ``layer`` of ``backbone`` (its token grid is not the heatmap's)."""
    gh, gw = backbone.grid_size
    tokens_grid = layer_grid(backbone, layer)
    if tokens_grid == (gh, gw):
        return None
    kind = type(backbone)
    return (
        f"activation_map needs one token of layer {layer} per heatmap patch, but that layer of "
        f"{kind.__name__} ({kind.__module__}) has {tokens_grid[0]}x{tokens_grid[1]} tokens and the heatmap "
        f"grid is {gh}x{gw}; explain a layer whose token grid is the heatmap grid (for timm_conv, set "
        "patch_size to that stage's stride) or use a gradient attributor"
    )


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

    def check_compatible(self, backbone: Backbone, saes: Sequence[Any] = ()) -> list[str]:
        """Problems that stop the map from being drawn at the layers of ``saes`` (see :func:`grid_problem`)."""
        found = (grid_problem(backbone, sae.layer) for sae in saes if sae.layer is not None)
        return [problem for problem in found if problem]

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

        Raises
        ------
        cafe_core.errors.IncompatibleComponentError
            If the target's layer has a token grid other than the heatmap grid (an inner stage of a conv net).
        """
        backbone, sae = target.backbone, target.sae
        problem = grid_problem(backbone, target.layer)
        if problem:
            raise IncompatibleComponentError(problem)
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
