"""The forwards that replace a module instance's own inside :func:`cafe_attnlrp.patching.lrp_rules`.

Each computes the module's values and routes the gradient through the rules of :mod:`cafe_attnlrp.rules`,
recording the relevance biases and embeddings absorb on a :class:`RelevanceProbe`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .rules import (
    absorb,
    add_mask,
    gamma_linear,
    identity_rule,
    layer_norm_rule,
    scale_gradient,
    stop_gradient,
    straight_through,
    value_attention,
)

__all__ = [
    "RelevanceProbe", "activation_forward", "attention_forward", "attention_pool_forward", "conv_forward",
    "layer_norm_forward", "linear_forward", "pos_embed_forward", "rms_norm_forward",
]


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


@functools.lru_cache(maxsize=16)
def _qkv_factors(width: int, q_and_k: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Gradient factors of the qkv projection's output channels: ``q_and_k`` for q and k, 1/2 for v."""
    return torch.tensor([q_and_k, q_and_k, 0.5], dtype=dtype, device=device).repeat_interleave(width)


def attention_forward(attn: nn.Module, rule: str, probe: RelevanceProbe, gamma: float) -> Callable[..., torch.Tensor]:
    """The attention with its rule, and the rule of its qkv projection (whose own forward is left as it is)."""
    # AttnLRP scales the gradients of q, k and v by constants, which commute with every backward map in
    # between: one per-channel factor on the projection's output does it all, unless q or k are normalised
    # (then their factors stay after the norms, whose bias relevance is measured with the scaled gradient).
    per_channel = isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity)
    qkv = attn.qkv

    def qkv_rule(x: torch.Tensor) -> torch.Tensor:
        factor = None
        if rule == "attnlrp":
            factor = _qkv_factors(qkv.out_features // 3, 0.25 if per_channel else 1.0, x.dtype, x.device)
        elif gamma == 0 and (qkv.bias is None or probe.tensor is None):
            return qkv(x)
        return gamma_linear(x, qkv.weight, qkv.bias, gamma, probe.tensor, factor)

    def forward(x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        b, n, _ = x.shape
        heads, head_dim = attn.num_heads, attn.head_dim
        qkv = qkv_rule(x).reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        if rule == "cp_lrp":
            q, k = stop_gradient(q), stop_gradient(k)
        elif not per_channel:
            # Uniform rule on q @ k^T and on attn @ v: q and k feed two bilinear products in a row.
            q, k = scale_gradient(q, 4), scale_gradient(k, 4)
        dropout = attn.attn_drop.p if attn.training else 0.0
        if attn.fused_attn and rule == "cp_lrp" and dropout == 0:
            out = value_attention(q, k, v, attn_mask, is_causal)
        elif attn.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout, is_causal=is_causal)
        else:
            scores = (q * attn.scale) @ k.transpose(-2, -1)
            scores = add_mask(scores, attn_mask, is_causal)
            out = attn.attn_drop(scores.softmax(dim=-1)) @ v
        out = out.transpose(1, 2).reshape(b, n, heads * head_dim)
        norm = getattr(attn, "norm", None)
        if norm is not None:
            out = norm(out)
        return attn.proj_drop(attn.proj(out))

    return forward


@functools.lru_cache(maxsize=16)
def _kv_factors(width: int, k: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Gradient factors of the kv projection's output channels: ``k`` for the keys, 1/2 for the values."""
    return torch.tensor([k, 0.5], dtype=dtype, device=device).repeat_interleave(width)


def attention_pool_forward(
    pool: nn.Module, rule: str, probe: RelevanceProbe, gamma: float
) -> Callable[..., torch.Tensor]:
    """timm's ``AttentionPoolLatent`` with the attention rule, its q and kv projections' rules run here.

    The query is a learned latent, a constant: under AttnLRP the relevance its share of ``q @ k^T`` receives
    is absorbed by the latent (and the q projection's bias); under CP-LRP no relevance reaches it.
    """
    per_channel = isinstance(pool.q_norm, nn.Identity) and isinstance(pool.k_norm, nn.Identity)
    q_proj, kv_proj = pool.q, pool.kv

    def project(linear: nn.Module, x: torch.Tensor, factor: torch.Tensor | None) -> torch.Tensor:
        if not isinstance(linear, nn.Linear):  # no q projection: the latent is the query
            return x
        if factor is None and gamma == 0 and (linear.bias is None or probe.tensor is None):
            return linear(x)
        return gamma_linear(x, linear.weight, linear.bias, gamma, probe.tensor, factor)

    def forward(x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        heads, head_dim, length = pool.num_heads, pool.head_dim, pool.latent_len
        attnlrp = rule == "attnlrp"
        latent = pool.latent.expand(b, -1, -1)
        if attnlrp and probe.tensor is not None:
            latent = absorb(latent, pool.latent, probe.tensor)
        q_factor = k_factor = None
        if attnlrp and per_channel:
            q_factor = x.new_full((q_proj.out_features,), 0.25) if isinstance(q_proj, nn.Linear) else None
            k_factor = _kv_factors(kv_proj.out_features // 2, 0.25, x.dtype, x.device)
        elif attnlrp:
            k_factor = _kv_factors(kv_proj.out_features // 2, 1.0, x.dtype, x.device)
        q = project(q_proj, latent, q_factor).reshape(b, length, heads, head_dim).transpose(1, 2)
        if attnlrp and per_channel and not isinstance(q_proj, nn.Linear):
            q = scale_gradient(q, 4)
        k, v = project(kv_proj, x, k_factor).reshape(b, n, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = pool.q_norm(q), pool.k_norm(k)
        if rule == "cp_lrp":
            q, k = stop_gradient(q), stop_gradient(k)
        elif not per_channel:
            q, k = scale_gradient(q, 4), scale_gradient(k, 4)
        if pool.fused_attn and rule == "cp_lrp":
            out = value_attention(q, k, v, attn_mask)
        elif pool.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        else:
            out = add_mask((q * pool.scale) @ k.transpose(-2, -1), attn_mask, False).softmax(dim=-1) @ v
        out = pool.proj_drop(pool.proj(out.transpose(1, 2).reshape(b, length, c)))
        if pool.mlp is not None:
            out = out + pool.mlp(pool.norm(out))
        return out[:, 0] if pool.pool == "token" else out.mean(1) if pool.pool == "avg" else out

    return forward


def _runs_f_layer_norm(norm: nn.Module) -> bool:
    """Whether the module's forward is ``F.layer_norm(x, normalized_shape, weight, bias, eps)`` and nothing else.

    The rule can then run that op itself and reuse the ``1 / std`` it computes.
    """
    import timm.layers

    forward = type(norm).forward
    timm_norm = getattr(timm.layers, "LayerNorm", None)
    return forward is nn.LayerNorm.forward or (
        timm_norm is not None and forward is timm_norm.forward and getattr(norm, "_fast_norm", True) is False
    )


def layer_norm_forward(norm: nn.Module, original: Callable, probe: RelevanceProbe) -> Callable:
    dims = tuple(range(-len(norm.normalized_shape), 0))
    plain = _runs_f_layer_norm(norm)

    def forward(x: torch.Tensor) -> torch.Tensor:
        fn = None if plain and not torch.is_autocast_enabled(x.device.type) else original
        return layer_norm_rule(fn, x, dims, norm.weight, norm.eps, norm.bias, probe.tensor)

    return forward


def rms_norm_forward(norm: nn.Module, original: Callable) -> Callable:
    dims = tuple(range(-len(norm.normalized_shape), 0))

    def forward(x: torch.Tensor) -> torch.Tensor:
        scale = torch.rsqrt(x.pow(2).mean(dim=dims, keepdim=True) + norm.eps)
        surrogate = x * scale.detach()
        if norm.weight is not None:
            surrogate = surrogate * norm.weight
        return straight_through(original(x), surrogate)

    return forward


def linear_forward(linear: nn.Linear, original: Callable, probe: RelevanceProbe, gamma: float) -> Callable:
    def forward(x: torch.Tensor) -> torch.Tensor:
        if gamma == 0 and (linear.bias is None or probe.tensor is None):
            return original(x)
        return gamma_linear(x, linear.weight, linear.bias, gamma, probe.tensor)

    return forward


def conv_forward(conv: nn.Conv2d, original: Callable, probe: RelevanceProbe) -> Callable:
    def forward(x: torch.Tensor) -> torch.Tensor:
        out = original(x)
        return out if conv.bias is None else absorb(out, conv.bias.view(-1, 1, 1), probe.tensor)

    return forward


def activation_forward(original: Callable, feeder: nn.Linear | None, probe: RelevanceProbe) -> Callable:
    """The identity rule; with ``feeder``, the layer before it, it also records the relevance of its bias."""
    if feeder is None or feeder.bias is None:
        return lambda x: identity_rule(original, x)
    return lambda x: identity_rule(original, x, feeder.bias, probe.tensor)


def pos_embed_forward(original: Callable, probe: RelevanceProbe) -> Callable:
    def forward(x: torch.Tensor) -> torch.Tensor:
        out = original(x)
        if probe.tensor is None:
            return out
        # The embedding step is affine in the patch tokens: its value at zero is what it adds.
        with torch.no_grad():
            added = original(torch.zeros_like(x))
        return absorb(out, added, probe.tensor)

    return forward
