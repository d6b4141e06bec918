"""AttnLRP and CP-LRP: layer-wise relevance of an SAE latent, back to the input patches, in one backward pass."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from cafe_core.gradients import input_gradients
from cafe_core.patches import pixels_to_patches
from cafe_core.protocols import Attribution, Backbone, RunContext, TargetFunction

from .patching import lrp_rules, unsupported_parts

__all__ = ["AttnLRP", "CPLRP"]


class _LayerwiseRelevance:
    """What AttnLRP and CP-LRP share; they differ only in the rule inside the attention."""

    needs_grad = True
    conserves_relevance = False
    attention_rule = "attnlrp"

    def __init__(self, gamma: float = 0.0, batching: str = "auto") -> None:
        self.gamma = float(gamma)
        self.batching = batching

    def check_compatible(self, backbone: Backbone, saes: Sequence[Any] = ()) -> list[str]:
        """Problems that stop this attributor from working on ``backbone`` (``[]`` when none).

        Every block up to the deepest layer of ``saes`` (every block, without SAEs), and whatever the backbone
        runs after the blocks of those layers (its ``trailing_modules``: a final norm, an attention-pool head),
        must be made of modules with a rule here (see :func:`cafe_attnlrp.patching.unsupported_parts`, the
        check each call makes before patching).
        """
        depth = len(getattr(backbone.model, "blocks", ()))
        layers = sorted({sae.layer for sae in saes if sae.layer is not None and 0 <= sae.layer < depth})
        # A layer past the depth is reported by the run's own checks.
        deepest = layers[-1] if layers else None
        names = (name for layer in layers or range(depth) for name in _trailing(backbone, layer))
        trailing = tuple(dict.fromkeys(names))
        return unsupported_parts(backbone.model, layer=deepest, who=self.attention_rule, trailing=trailing)

    def attribute(self, target: TargetFunction, x: torch.Tensor, context: RunContext) -> Attribution:
        """Relevance maps of the rows of ``x [B, 3, H, W]`` with respect to ``target``.

        Parameters
        ----------
        target : TargetFunction
            The latent and token of each row; its backbone must wrap a timm VisionTransformer.
        x : torch.Tensor
            Model inputs ``[B, 3, H, W]``.
        context : RunContext
            ``batch_size`` bounds the images per forward/backward pass.

        Returns
        -------
        Attribution
            ``heatmap [B, gh, gw]`` (pixel relevance summed over channels and within each patch),
            ``pixels [B, H, W]``, and per row in ``info``: ``z`` the latent, ``absorbed`` the relevance
            taken by biases and embeddings (``absorbed_sae`` the part of it taken by the SAE encoder's
            biases), ``conservation_error`` = ``z - heatmap.sum() - absorbed``.

        Raises
        ------
        cafe_attnlrp.patching.UnsupportedModelError
            If the backbone is not a timm VisionTransformer made of modules with a rule here (a
            :class:`cafe_core.errors.IncompatibleComponentError`).
        """
        backbone = target.backbone
        trailing = _trailing(backbone, target.layer)
        with lrp_rules(backbone.model, target.layer, self.attention_rule, self.gamma, trailing) as probe:

            def probe_leaf(n_images: int) -> list[torch.Tensor]:
                probe.tensor = x.new_zeros(n_images, requires_grad=True)
                return [probe.tensor]

            gradients = input_gradients(target, x, context, batching=self.batching, extra_leaves=probe_leaf)
        z = gradients.z
        pixels = (x.detach() * gradients.inputs).sum(dim=1)
        # The SAE part is linear then ReLU, where gradient x input is LRP-0: the relevance z does not pass on
        # to the tokens is what the encoder's own biases (b_e and the centering b_d) take.
        absorbed_sae = z - (gradients.token * gradients.token_grad).sum(1)
        absorbed = gradients.extras[0] + absorbed_sae
        error = z - pixels.flatten(1).sum(1) - absorbed
        return Attribution(
            heatmap=pixels_to_patches(pixels, backbone.patch_size),
            pixels=pixels,
            info={"z": z, "absorbed": absorbed, "absorbed_sae": absorbed_sae, "conservation_error": error},
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(gamma={self.gamma}, batching={self.batching!r})"


def _trailing(backbone: Backbone, layer: int) -> tuple[str, ...]:
    """The model's submodules the backbone runs after block ``layer`` (none unless it says so)."""
    method = getattr(backbone, "trailing_modules", None)
    return tuple(method(layer)) if callable(method) else ()


class AttnLRP(_LayerwiseRelevance):
    """Attention-aware LRP (AttnLRP) of an SAE latent, through the SAE encoder and blocks ``0..L`` of a ViT.

    Rules, as in LXT (the reference implementation of AttnLRP): LayerNorm by the identity rule (standard
    deviation held constant), the MLP activation by the identity rule, the uniform rule on the two
    bilinear products of the attention (gradients of queries and keys divided by 4, of values by 2), the
    softmax by its gradient x input, ``Linear`` layers by LRP-0 (or LRP-gamma, ``gamma > 0``), and the
    SAE encoder (linear then ReLU) by LRP-0. The relevance of a pixel is input times the modified
    gradient, summed over channels and within each patch. One forward and one backward pass per chunk
    of ``context.batch_size`` rows; the latents of one image share one forward pass and a batched
    backward pass (``batching``).

    The softmax's rule does not conserve relevance exactly; ``info["conservation_error"]`` reports by how
    much each row's heatmap and absorbed relevance miss ``z``.

    Parameters
    ----------
    gamma : float
        LRP-gamma for the ``Linear`` layers of the blocks (q, k, v and output projections, MLP); ``0``
        (the default) is LRP-0, larger values favour positive contributions and smooth the maps.
    batching : {"auto", "rows", "shared", "jacobian"}
        How rows that explain several latents of one image share work (see
        :func:`cafe_core.gradients.input_gradients`); every choice gives the same maps.

    References
    ----------
    R. Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for Transformers",
    ICML 2024.
    """


class CPLRP(_LayerwiseRelevance):
    """Conservative propagation (CP-LRP) of an SAE latent through the SAE encoder and blocks ``0..L`` of a ViT.

    The rules of :class:`AttnLRP` except inside the attention, where no relevance flows through the
    queries and keys (the attention weights are held constant) and the values receive all of it, as in
    LXT's rules for vision transformers. Relevance is then conserved exactly: the heatmap plus the relevance
    absorbed by biases, by the class, register and position embeddings and by the SAE encoder's biases
    (``info["absorbed"]``) sums to ``z``.

    Parameters
    ----------
    gamma : float
        LRP-gamma for the ``Linear`` layers of the blocks; ``0`` (the default) is LRP-0. Conservation holds
        for any ``gamma``.
    batching : {"auto", "rows", "shared", "jacobian"}
        As for :class:`AttnLRP`.

    References
    ----------
    A. Ali et al., "XAI for Transformers: Better Explanations through Conservative Propagation", ICML 2022.
    """

    conserves_relevance = True
    attention_rule = "cp_lrp"
