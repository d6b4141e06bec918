"""Where the relevance of an SAE latent goes under AttnLRP or CP-LRP: a per-block account of ``z``.

``z`` is split into what reaches the input pixels (the heatmap) and what each part of the model keeps on the
way: the SAE encoder's biases, the biases of each block's LayerNorms, attention and MLP, what the softmax of
each block does not pass on, and, in the embedding, the patch embedding's bias, the class (and register)
tokens and the position embedding. The parts are measured apart, so that their sum equals ``z`` only if the
rules conserve everything else (the conservation law the tests check):

* the relevance ``sum(t * dz/dt)`` of the residual stream is read at the input of every block and at the
  SAE's layer (forward hooks, the modified gradient of the rules);
* the biases' relevance is recorded on one probe per sub-module (the attributor records them all on one);
* the softmax's loss is computed from the attention weights ``s`` and their modified gradient ``g``
  directly: the rule passes ``sum(s * g)`` to ``s`` and ``sum(xlogy(s, s) * (g - sum(s * g)))`` to the
  scores (the softmax's gradient x input with the log-weights as inputs, shift-invariant per row), and the
  uniform rule on ``q @ k^T`` halves the difference (AttnLRP; CP-LRP passes nothing into the scores and
  loses nothing there);
* the embedding's parts are the parameters times the gradient at the blocks' input.

Each block's change of residual relevance minus its biases and its softmax term is reported as
``residual`` (zero up to rounding when the rules do what they claim).

Only what runs in blocks ``0..L`` of a timm ``VisionTransformer`` with ``Block`` modules (``norm1``, ``attn``,
``norm2``, ``mlp``), non-fused attention switched on for the call, is accounted for.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import torch

from cafe_core.protocols import TargetFunction

from .patching import lrp_rules

__all__ = ["relevance_budget"]

_BLOCK_PARTS = ("norm1", "attn", "norm2", "mlp")


def relevance_budget(target: TargetFunction, x: torch.Tensor, rule: str = "attnlrp") -> dict[str, torch.Tensor]:
    """The account of each row's ``z``: ``{part: [B]}``.

    Parameters
    ----------
    target : TargetFunction
        The rows' latents and tokens; its backbone must wrap a timm VisionTransformer of ``Block`` modules.
    x : torch.Tensor
        Model inputs ``[B, 3, H, W]``.
    rule : {"attnlrp", "cp_lrp"}
        The attention rule.

    Returns
    -------
    dict of str to torch.Tensor
        ``z``; ``input`` (the heatmap's sum); ``sae_biases``; per block ``l``: ``block{l}.norm_biases``,
        ``block{l}.attention_biases`` (qkv and output projection), ``block{l}.mlp_biases``,
        ``block{l}.softmax`` (what the softmax does not pass on), ``block{l}.softmax_received`` (what
        reaches the softmax: the attention weights' share of the attention's relevance, halved by the
        uniform rule, so that ``softmax / softmax_received`` is the share it loses) and
        ``block{l}.residual`` (what the block
        loses that none of these explains); ``patch_embed_bias``, ``class_tokens`` (class and register
        tokens, with their position embedding when the model adds one to them), ``pos_embed`` (the patch
        tokens' position embedding) and ``embedding.residual``; and ``total``, the sum of every part but
        ``z``, the residuals and ``softmax_received`` (``z - total`` is the sum of the residuals).
    """
    backbone = target.backbone
    model = backbone.model
    layer = target.layer
    blocks = list(model.blocks[: layer + 1])
    n = len(x)
    leaf = lambda: torch.zeros(n, dtype=x.dtype, device=x.device, requires_grad=True)  # noqa: E731
    probes: dict[str, torch.Tensor] = {"patch_embed_bias": leaf()}
    for index in range(len(blocks)):
        for part in _BLOCK_PARTS:
            probes[f"block{index}.{part}"] = leaf()
    stream: list[torch.Tensor] = []  # the input of every block, then the SAE's layer
    weights: list[list[torch.Tensor]] = [[] for _ in blocks]

    with ExitStack() as stack:
        trailing = getattr(backbone, "trailing_modules", None)
        if callable(trailing) and tuple(trailing(layer)):
            raise TypeError("relevance_budget accounts for models read at a block's output only (no final norm)")
        if not isinstance(model.norm_pre, torch.nn.Identity):
            raise TypeError("relevance_budget accounts for models without a norm before the blocks only")
        for block in blocks:
            if not all(hasattr(block, part) for part in _BLOCK_PARTS) or not hasattr(block.attn, "fused_attn"):
                raise TypeError("relevance_budget accounts for timm Blocks (norm1, attn, norm2, mlp) only")
            stack.callback(setattr, block.attn, "fused_attn", block.attn.fused_attn)
            block.attn.fused_attn = False  # the weights are then an explicit tensor that attn_drop sees
        probe = stack.enter_context(lrp_rules(model, layer, rule))
        handles = []

        def use(name: str):
            def hook(module: Any, args: Any) -> None:
                probe.tensor = probes[name]

            return hook

        def keep_input(module: Any, args: Any) -> None:
            stream.append(args[0])

        handles.append(model.patch_embed.register_forward_pre_hook(use("patch_embed_bias")))
        handles.append(model.patch_embed.register_forward_hook(lambda m, a, out: setattr(probe, "tensor", None)))
        for index, block in enumerate(blocks):
            handles.append(block.register_forward_pre_hook(keep_input))
            for part in _BLOCK_PARTS:
                handles.append(getattr(block, part).register_forward_pre_hook(use(f"block{index}.{part}")))
            drop = block.attn.attn_drop
            stack.callback(vars(drop).pop, "forward", None)
            vars(drop)["forward"] = lambda s, into=weights[index]: into.append(s) or s
        for handle in handles:
            stack.callback(handle.remove)

        inputs = x.detach().clone().requires_grad_(True)
        h = target.tokens(inputs)
        z = target.from_tokens(h)
        stream.append(h)
        if rule != "attnlrp":  # CP-LRP holds the weights constant: nothing to measure there
            weights = [[] for _ in blocks]
        leaves = [inputs, *stream, *probes.values(), *(s for found in weights for s in found)]
        grads = torch.autograd.grad(z.sum(), leaves, allow_unused=True)

    def zero_if_none(g: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(like) if g is None else g

    grads = [zero_if_none(g, t) for g, t in zip(grads, leaves)]
    grad_inputs, rest = grads[0], grads[1:]
    stream_grads, rest = rest[: len(stream)], rest[len(stream) :]
    probe_grads, weight_grads = rest[: len(probes)], rest[len(probes) :]
    absorbed = dict(zip(probes, probe_grads))

    def relevance(t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return (t.detach() * g).flatten(1).sum(1)

    budget: dict[str, torch.Tensor] = {"z": z.detach()}
    budget["input"] = relevance(inputs, grad_inputs)
    at_layer = relevance(stream[-1], stream_grads[-1])
    budget["sae_biases"] = budget["z"] - at_layer
    # The embedding: what enters block 0 is patch_embed(x) (+ bias) + class/register tokens + position embedding.
    into_blocks = stream_grads[0]
    n_prefix = len(getattr(backbone, "prefix_tokens", ())) or model.num_prefix_tokens
    with torch.no_grad():
        added = model._pos_embed(torch.zeros_like(model.patch_embed(x[:1].detach())))[0]  # [T, D]
    budget["patch_embed_bias"] = absorbed["patch_embed_bias"]
    budget["class_tokens"] = (into_blocks[:, :n_prefix] * added[:n_prefix]).flatten(1).sum(1)
    budget["pos_embed"] = (into_blocks[:, n_prefix:] * added[n_prefix:]).flatten(1).sum(1)
    embedding = ("input", "patch_embed_bias", "class_tokens", "pos_embed")
    budget["embedding.residual"] = relevance(stream[0], into_blocks) - sum(budget[part] for part in embedding)
    cursor = 0
    for index in range(len(blocks)):
        found = weights[index]
        softmax = torch.zeros(n, dtype=x.dtype, device=x.device)
        received = torch.zeros(n, dtype=x.dtype, device=x.device)
        if rule == "attnlrp":
            for s, g in zip(found, weight_grads[cursor : cursor + len(found)]):
                s = s.detach()
                weights_relevance = (s * g).flatten(1).sum(1)
                into_scores = (torch.xlogy(s, s) * (g - (s * g).sum(-1, keepdim=True))).flatten(1).sum(1)
                received += weights_relevance / 2
                softmax += (weights_relevance - into_scores) / 2
        cursor += len(found)
        prefix = f"block{index}"
        budget[f"{prefix}.norm_biases"] = absorbed[f"{prefix}.norm1"] + absorbed[f"{prefix}.norm2"]
        budget[f"{prefix}.attention_biases"] = absorbed[f"{prefix}.attn"]
        budget[f"{prefix}.mlp_biases"] = absorbed[f"{prefix}.mlp"]
        budget[f"{prefix}.softmax"] = softmax
        budget[f"{prefix}.softmax_received"] = received
        change = relevance(stream[index + 1], stream_grads[index + 1]) - relevance(stream[index], stream_grads[index])
        parts = ("norm_biases", "attention_biases", "mlp_biases", "softmax")
        explained = sum(budget[f"{prefix}.{part}"] for part in parts)
        budget[f"{prefix}.residual"] = change - explained
    budget["total"] = sum(
        value for name, value in budget.items() if name != "z" and not name.endswith(("residual", "received"))
    )
    return budget
