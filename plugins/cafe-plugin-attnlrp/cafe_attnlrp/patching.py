"""Temporary, instance-level LRP patches of a timm VisionTransformer.

:func:`lrp_rules` replaces the ``forward`` of the module instances that run up to one block (never their
classes) with versions that compute the same values but propagate relevance by the LRP rules of
:mod:`cafe_attnlrp.rules`, and puts every attribute back when the ``with`` block ends, also when it ends
with an exception.

What is patched, for the patch embedding, ``norm_pre`` and blocks ``0..layer``:

* ``LayerNorm``: the standard deviation is treated as a constant, the mean subtraction is not (the identity
  rule of normalisation); ``RmsNorm`` likewise with its root mean square;
* the activation of each ``Mlp`` (GELU): the identity rule;
* ``Attention``: re-implemented with the rule applied to the queries, keys and values right before the
  attention product (AttnLRP: gradients of q and k divided by 4 and of v by 2, the softmax keeps its
  ordinary gradient; CP-LRP: no gradient through q and k);
* every ``Linear`` and the patch embedding's ``Conv2d``: unchanged gradient (or the LRP-gamma rule for the
  ``Linear`` layers when ``gamma > 0``), plus a record of the relevance their bias absorbs;
* the model's ``_pos_embed``: a record of the relevance absorbed by the class, register and position
  embeddings.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .rules import absorb, gamma_linear, identity_rule, layer_norm_rule, scale_gradient, stop_gradient, straight_through

__all__ = ["ATTENTION_RULES", "RelevanceProbe", "UnsupportedModelError", "lrp_rules"]

ATTENTION_RULES = ("attnlrp", "cp_lrp")

# Models inside an lrp_rules block: patching one twice would stack the rules.
_ACTIVE: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


class UnsupportedModelError(TypeError):
    """The model, or one of the modules that run up to the requested block, has no LRP rule here."""


@dataclass
class RelevanceProbe:
    """Where the patched modules report the relevance absorbed by biases and embeddings.

    Attributes
    ----------
    tensor : torch.Tensor or None
        ``[B]`` zeros requiring grad, set for the duration of one forward and backward pass: after the
        backward, its gradient holds each row's absorbed relevance. ``None`` records nothing.
    """

    tensor: torch.Tensor | None = None


class _InstancePatches:
    """Instance attributes set for a while, restored exactly (present or absent) afterwards."""

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, bool, Any]] = []

    def set(self, obj: Any, name: str, value: Any) -> None:
        state = vars(obj)
        self._saved.append((obj, name, name in state, state.get(name)))
        state[name] = value

    def restore(self) -> None:
        while self._saved:
            obj, name, had, old = self._saved.pop()
            if had:
                vars(obj)[name] = old
            else:
                vars(obj).pop(name, None)


def _timm_classes() -> dict[str, tuple[type, ...]]:
    import timm.layers as layers
    from timm.models import vision_transformer as vit

    def found(*names: str, module: Any = layers) -> tuple[type, ...]:
        return tuple(c for c in (getattr(module, n, None) for n in names) if isinstance(c, type))

    return {
        "vit": (vit.VisionTransformer,),
        "attention": found("Attention", module=vit) or found("Attention"),
        "mlp": found("Mlp", module=vit) or found("Mlp"),
        "layer_norm": (nn.LayerNorm,) + found("LayerNorm", "LayerNormFp32"),
        "rms_norm": found("RmsNorm"),
        "passthrough": (
            nn.Identity,
            nn.Dropout,
            nn.Sequential,
            nn.ModuleList,
            *found("Block", "ResPostBlock", "LayerScale", module=vit),
            *found("LayerScale", "DropPath", "PatchDropout", "PatchEmbed"),
        ),
    }


def _plan(model: nn.Module, layer: int) -> list[tuple[str, str, nn.Module]]:
    """``(name, kind, module)`` of every module to patch; raises for anything without a rule."""
    classes = _timm_classes()
    if not isinstance(model, classes["vit"]):
        raise UnsupportedModelError(
            f"AttnLRP and CP-LRP support timm VisionTransformer models, got {type(model).__name__}"
        )
    depth = len(model.blocks)
    if not 0 <= int(layer) < depth:
        raise ValueError(f"layer {layer} is out of range; the model has blocks 0..{depth - 1}")
    parts = [("patch_embed", model.patch_embed), ("patch_drop", model.patch_drop), ("norm_pre", model.norm_pre)]
    parts += [(f"blocks.{i}", model.blocks[i]) for i in range(int(layer) + 1)]

    activations = set()
    plan, unsupported = [], []
    for prefix, part in parts:
        for sub, module in part.named_modules(prefix=prefix):
            kind = type(module)
            if id(module) in activations:
                if getattr(module, "inplace", False):
                    unsupported.append(f"{sub} (in-place {kind.__name__})")
                plan.append((sub, "activation", module))
            elif isinstance(module, classes["attention"]) and kind.forward in [c.forward for c in classes["attention"]]:
                if getattr(module, "gate", None) is not None:
                    unsupported.append(f"{sub} (gated attention)")
                plan.append((sub, "attention", module))
            elif isinstance(module, classes["mlp"]) and kind.forward in [c.forward for c in classes["mlp"]]:
                activations.add(id(module.act))
            elif kind is nn.Linear:
                plan.append((sub, "linear", module))
            elif kind is nn.Conv2d:
                plan.append((sub, "conv", module))
            elif kind in classes["layer_norm"]:
                plan.append((sub, "layer_norm", module))
            elif kind in classes["rms_norm"]:
                plan.append((sub, "rms_norm", module))
            elif kind not in classes["passthrough"]:
                unsupported.append(f"{sub} ({kind.__name__})")
    if unsupported:
        raise UnsupportedModelError(
            f"no LRP rule for these modules of blocks 0..{layer}: {', '.join(unsupported)}; supported are "
            "timm's Block with Attention, Mlp (element-wise activation), LayerNorm, RmsNorm, LayerScale"
        )
    seen, unique = set(), []
    for entry in plan:
        if id(entry[2]) not in seen:
            seen.add(id(entry[2]))
            unique.append(entry)
    return unique


def _attention_rule(rule: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    if rule == "attnlrp":
        # Uniform rule on q @ k^T and on attn @ v: q and k feed two bilinear products in a row.
        return lambda q, k, v: (scale_gradient(q, 4), scale_gradient(k, 4), scale_gradient(v, 2))
    return lambda q, k, v: (stop_gradient(q), stop_gradient(k), v)


def _attention_forward(attn: nn.Module, rule: str) -> Callable[..., torch.Tensor]:
    apply_rule = _attention_rule(rule)

    def forward(x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        b, n, _ = x.shape
        heads, head_dim = attn.num_heads, attn.head_dim
        qkv = attn.qkv(x).reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        q, k, v = apply_rule(q, k, v)
        if attn.fused_attn:
            dropout = attn.attn_drop.p if attn.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout, is_causal=is_causal)
        else:
            scores = (q * attn.scale) @ k.transpose(-2, -1)
            scores = _add_mask(scores, attn_mask, is_causal)
            out = attn.attn_drop(scores.softmax(dim=-1)) @ v
        out = out.transpose(1, 2).reshape(b, n, heads * head_dim)
        norm = getattr(attn, "norm", None)
        if norm is not None:
            out = norm(out)
        return attn.proj_drop(attn.proj(out))

    return forward


def _add_mask(scores: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool) -> torch.Tensor:
    """Scores with a mask added as scaled_dot_product_attention reads it."""
    n, m = scores.shape[-2:]
    if is_causal:
        return scores + scores.new_full((n, m), float("-inf")).triu(1)
    if attn_mask is None:
        return scores
    if attn_mask.dtype == torch.bool:
        return scores.masked_fill(~attn_mask, float("-inf"))
    return scores + attn_mask


def _layer_norm_forward(norm: nn.Module, original: Callable, probe: RelevanceProbe) -> Callable:
    dims = tuple(range(-len(norm.normalized_shape), 0))

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = layer_norm_rule(original, x, dims, norm.weight, norm.eps)
        return out if norm.bias is None else absorb(out, norm.bias, probe.tensor)

    return forward


def _rms_norm_forward(norm: nn.Module, original: Callable) -> Callable:
    dims = tuple(range(-len(norm.normalized_shape), 0))

    def forward(x: torch.Tensor) -> torch.Tensor:
        scale = torch.rsqrt(x.pow(2).mean(dim=dims, keepdim=True) + norm.eps)
        surrogate = x * scale.detach()
        if norm.weight is not None:
            surrogate = surrogate * norm.weight
        return straight_through(original(x), surrogate)

    return forward


def _linear_forward(linear: nn.Linear, original: Callable, probe: RelevanceProbe, gamma: float) -> Callable:
    def forward(x: torch.Tensor) -> torch.Tensor:
        if gamma > 0:
            return gamma_linear(x, linear.weight, linear.bias, gamma, probe.tensor)
        out = original(x)
        return out if linear.bias is None else absorb(out, linear.bias, probe.tensor)

    return forward


def _conv_forward(conv: nn.Conv2d, original: Callable, probe: RelevanceProbe) -> Callable:
    def forward(x: torch.Tensor) -> torch.Tensor:
        out = original(x)
        return out if conv.bias is None else absorb(out, conv.bias.view(-1, 1, 1), probe.tensor)

    return forward


def _activation_forward(original: Callable) -> Callable:
    return lambda x: identity_rule(original, x)


def _pos_embed_forward(original: Callable, probe: RelevanceProbe) -> Callable:
    def forward(x: torch.Tensor) -> torch.Tensor:
        out = original(x)
        if probe.tensor is None:
            return out
        # The embedding step is affine in the patch tokens: its value at zero is what it adds.
        with torch.no_grad():
            added = original(torch.zeros_like(x))
        return absorb(out, added, probe.tensor)

    return forward


@contextmanager
def lrp_rules(
    model: nn.Module, layer: int, attention: str = "attnlrp", gamma: float = 0.0
) -> Iterator[RelevanceProbe]:
    """Patch the module instances of a timm VisionTransformer that run up to block ``layer``.

    Inside the ``with`` block the model computes the same values as before; gradients taken through it
    are LRP relevances divided by the inputs (gradient x input gives the relevance). All patches are
    instance attributes and are removed on exit, also when the block raises.

    Parameters
    ----------
    model : timm.models.vision_transformer.VisionTransformer
        The model; only its patch embedding, ``norm_pre`` and blocks ``0..layer`` are patched.
    layer : int
        Last block that runs.
    attention : {"attnlrp", "cp_lrp"}
        Rule inside the attention: AttnLRP's uniform rule, or CP-LRP's stop-gradient on queries and keys.
    gamma : float
        LRP-gamma for the ``Linear`` layers of the blocks; ``0`` keeps their plain gradient (LRP-0).

    Yields
    ------
    RelevanceProbe
        Set its ``tensor`` to ``[B]`` zeros requiring grad before a forward pass to collect the relevance
        absorbed by biases and embeddings per row.

    Raises
    ------
    UnsupportedModelError
        For a model that is not a timm VisionTransformer, or with a module that has no rule here (gated
        MLPs, gated attention, hybrid CNN stems...).
    RuntimeError
        If the model is already inside an ``lrp_rules`` block.
    """
    if attention not in ATTENTION_RULES:
        raise ValueError(f"attention must be one of {ATTENTION_RULES}, got {attention!r}")
    gamma = float(gamma)
    if not gamma >= 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    plan = _plan(model, layer)
    if model in _ACTIVE:
        raise RuntimeError("the model is already inside an lrp_rules block; the rules cannot be nested")
    _ACTIVE.add(model)
    probe = RelevanceProbe()
    patches = _InstancePatches()
    try:
        for _, kind, module in plan:
            original = module.forward
            if kind == "attention":
                forward = _attention_forward(module, attention)
            elif kind == "activation":
                forward = _activation_forward(original)
            elif kind == "layer_norm":
                forward = _layer_norm_forward(module, original, probe)
            elif kind == "rms_norm":
                forward = _rms_norm_forward(module, original)
            elif kind == "linear":
                forward = _linear_forward(module, original, probe, gamma)
            else:
                forward = _conv_forward(module, original, probe)
            patches.set(module, "forward", forward)
        patches.set(model, "_pos_embed", _pos_embed_forward(model._pos_embed, probe))
        yield probe
    finally:
        probe.tensor = None
        patches.restore()
        _ACTIVE.discard(model)
