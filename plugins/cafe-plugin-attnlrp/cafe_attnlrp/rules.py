"""LRP rules written as modified gradients: each op leaves the forward value unchanged.

In the gradient x input formulation of LRP, the relevance of a tensor ``t`` is ``t * dz/dt`` where the
derivative is taken through ops whose backward implements a propagation rule instead of the true gradient.
Every function here returns exactly the value the unmodified model computes (so a patched model still
produces the same outputs) and changes only what flows backward.

The relevance a bias absorbs is recorded on the gradient of a *probe*, ``[B]`` zeros that require grad (see
:func:`absorb`). The rules of the layers that add a bias (``LayerNorm``, ``Linear``) and of an activation
that reads a ``Linear``'s output take the probe as an input and compute its gradient in their own backward,
which costs a reduction and a matrix-vector product instead of extra autograd nodes.

References
----------
.. [1] R. Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for Transformers",
   ICML 2024.
.. [2] A. Ali et al., "XAI for Transformers: Better Explanations through Conservative Propagation",
   ICML 2022.
.. [3] G. Montavon et al., "Layer-Wise Relevance Propagation: An Overview", 2019 (the gamma rule).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "absorb",
    "add_mask",
    "gamma_linear",
    "identity_rule",
    "layer_norm_rule",
    "scale_gradient",
    "stop_gradient",
    "straight_through",
    "value_attention",
]


def _absorbed(grad: torch.Tensor, constant: torch.Tensor) -> torch.Tensor:
    """``sum(grad[b] * constant)`` for each row ``b`` of ``grad``, with ``constant`` broadcastable to it."""
    dtype = torch.promote_types(grad.dtype, constant.dtype)  # under autocast a float32 bias meets bf16 grads
    grad, constant = grad.to(dtype), constant.to(dtype)
    if constant.dim() == 1 and grad.dim() > 1 and grad.shape[-1] == constant.shape[0]:
        # A bias: summing over the tokens first leaves a small matrix-vector product.
        return torch.mv(grad.sum(tuple(range(1, grad.dim() - 1))) if grad.dim() > 2 else grad, constant)
    constant = constant[0] if constant.dim() == grad.dim() else constant  # without a leading dimension of 1
    shape = (1,) * (grad.dim() - 1 - constant.dim()) + tuple(constant.shape)
    dims = [i + 1 for i, size in enumerate(shape) if size == 1 and grad.shape[i + 1] != 1]
    if dims:
        grad = grad.sum(dims, keepdim=True)
    return torch.mv(grad.reshape(grad.shape[0], -1), constant.reshape(-1))


def _probe_dtype(probe: torch.Tensor | None, x: torch.Tensor) -> torch.dtype | None:
    """What the probe's gradient must be cast to (``None``: nothing, or no probe); checks its rows."""
    if probe is None:
        return None
    if probe.shape[0] != x.shape[0]:
        raise ValueError(f"relevance probe has {probe.shape[0]} rows but the tensor has {x.shape[0]}")
    return None if probe.dtype == x.dtype else probe.dtype


def _probe_grad(ctx, grad: torch.Tensor, constant: torch.Tensor | None) -> torch.Tensor:
    absorbed = grad.new_zeros(grad.shape[0]) if constant is None else _absorbed(grad, constant)
    return absorbed if ctx.cast is None else absorbed.to(ctx.cast)


class _IdentityRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fn, constant, probe):  # noqa: D102 - see identity_rule
        out = fn(x)
        ctx.cast = _probe_dtype(probe, x)
        if _is_exact_gelu(fn):
            # gelu(x) / x is the normal CDF, 1/2 at 0 (0 / 0 is the only NaN for finite x): a division is much
            # cheaper than the CDF, and x * grad_x then matches fn(x) * grad_out to the rounding of the forward.
            ratio = torch.div(out, x).nan_to_num_(0.5)
        else:
            zero = x == 0
            # At x == 0 the relevance x * grad is zero whatever the ratio; 0 keeps it finite.
            ratio = torch.where(zero, torch.zeros_like(out), out / torch.where(zero, 1, x))
        ctx.save_for_backward(ratio, constant)
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: D102 - see identity_rule
        ratio, constant = ctx.saved_tensors
        grad = grad * ratio
        return grad, None, None, _probe_grad(ctx, grad, constant) if ctx.needs_input_grad[3] else None


def identity_rule(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    constant: torch.Tensor | None = None,
    probe: torch.Tensor | None = None,
) -> torch.Tensor:
    """``fn(x)`` for an element-wise ``fn``, with relevance passed through unchanged (the identity rule).

    The backward multiplies the incoming gradient by ``fn(x) / x`` (zero where ``x == 0``; the exact GELU's
    ratio is the normal CDF, ``1/2`` there), so that ``x * grad_x == fn(x) * grad_out``: the relevance of
    each element is carried over as is.

    Parameters
    ----------
    fn : callable
        Element-wise activation (GELU, SiLU...), not in-place.
    x : torch.Tensor
        Its input ``[B, ...]``.
    constant : torch.Tensor, optional
        An additive term of ``x`` (the bias of the layer that computed it): with ``probe``, the relevance it
        absorbs is recorded as :func:`absorb` on ``x`` would.
    probe : torch.Tensor, optional
        ``[B]`` zeros requiring grad.

    Returns
    -------
    torch.Tensor
        ``fn(x)``, bit for bit.
    """
    return _IdentityRule.apply(x, fn, None if probe is None else constant, probe)


def _is_exact_gelu(fn: Callable) -> bool:
    module = getattr(fn, "__self__", fn)  # a module, or its bound forward
    return (isinstance(module, torch.nn.GELU) and module.approximate == "none") or fn is F.gelu


class _LayerNormRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fn, dims, weight, bias, eps, probe):  # noqa: D102 - see layer_norm_rule
        shape = x.shape[x.dim() - len(dims) :]
        if fn is None:
            # The op F.layer_norm runs, which also returns the 1 / std it divided by.
            out, _, inv_std = torch.native_layer_norm(x, shape, weight, bias, eps)
        else:
            out = fn(x)
            inv_std = torch.rsqrt(x.var(dim=dims, unbiased=False, keepdim=True).add_(eps))
        ctx.dims, ctx.alpha, ctx.cast = dims, -1.0 / math.prod(shape), _probe_dtype(probe, x)
        # 1 / std and the weight apart: their product would be as large as x, kept until the backward.
        ctx.save_for_backward(inv_std, weight, None if probe is None else bias)
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: D102 - see layer_norm_rule
        inv_std, weight, bias = ctx.saved_tensors
        g = grad * inv_std if weight is None else (grad * weight).mul_(inv_std)
        grad_x = g.add_(g.sum(ctx.dims, keepdim=True), alpha=ctx.alpha)  # g - mean(g)
        return grad_x, None, None, None, None, None, _probe_grad(ctx, grad, bias) if ctx.needs_input_grad[6] else None


def layer_norm_rule(
    fn: Callable[[torch.Tensor], torch.Tensor] | None,
    x: torch.Tensor,
    dims: tuple[int, ...],
    weight: torch.Tensor | None,
    eps: float,
    bias: torch.Tensor | None = None,
    probe: torch.Tensor | None = None,
) -> torch.Tensor:
    """``fn(x)`` for a LayerNorm ``fn``, with the identity rule on the normalisation (AttnLRP).

    The backward treats the standard deviation as a constant while the mean subtraction stays
    differentiable: ``grad_x = g - mean(g)`` over ``dims`` with ``g = grad_out * weight / std``, the gradient
    of ``(x - mean(x)) / std.detach() * weight + bias``.

    Parameters
    ----------
    fn : callable or None
        The LayerNorm module (its value is returned bit for bit); ``None`` for
        ``F.layer_norm(x, shape, weight, bias, eps)`` over the ``dims``, which also gives the standard deviation.
    x : torch.Tensor
        Its input ``[B, ...]``.
    dims : tuple of int
        The normalised dimensions (the last ones, negative).
    weight : torch.Tensor or None
        The elementwise scale.
    eps : float
        The variance epsilon.
    bias : torch.Tensor, optional
        The elementwise shift: with ``probe``, the relevance it absorbs is recorded (see :func:`absorb`).
    probe : torch.Tensor, optional
        ``[B]`` zeros requiring grad.

    Returns
    -------
    torch.Tensor
        The LayerNorm of ``x``, bit for bit.
    """
    return _LayerNormRule.apply(x, fn, tuple(dims), weight, bias, float(eps), probe)


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad / ctx.factor, None


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` forward, gradient divided by ``factor`` backward.

    Placed on the operands of a bilinear op, it implements AttnLRP's uniform rule: gradient x input counts
    the output's relevance once per operand, dividing by the number of operands shares it evenly.
    """
    return _ScaleGradient.apply(x, float(factor))


def stop_gradient(x: torch.Tensor) -> torch.Tensor:
    """``x`` forward, no gradient backward (CP-LRP's treatment of queries and keys)."""
    return x.detach()


def straight_through(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """The forward value of ``value`` with the gradient of ``surrogate``.

    ``surrogate - surrogate.detach()`` is exactly zero, so the result equals ``value`` bit for bit (for
    finite surrogates) while the whole gradient flows through ``surrogate``.
    """
    return value.detach() + (surrogate - surrogate.detach())


def absorb(out: torch.Tensor, constant: torch.Tensor, probe: torch.Tensor | None) -> torch.Tensor:
    """Record the relevance a bias absorbs, per row, on the gradient of ``probe``.

    Returns ``out + probe * constant`` with ``probe`` a zero vector ``[B]``: the value is unchanged, the
    gradient with respect to ``out`` is unchanged, and the gradient with respect to ``probe[b]`` is
    ``sum(constant * grad_out[b])``, the relevance taken by the additive term ``constant`` in row ``b``.

    Parameters
    ----------
    out : torch.Tensor
        ``[B, ...]`` output of an op that adds ``constant``.
    constant : torch.Tensor
        The additive term, broadcastable to ``out`` (a bias, position and class embeddings).
    probe : torch.Tensor or None
        ``[B]`` zeros that require grad; ``None`` leaves ``out`` as it is.
    """
    if probe is None:
        return out
    if probe.shape[0] != out.shape[0]:
        raise ValueError(f"relevance probe has {probe.shape[0]} rows but the tensor has {out.shape[0]}")
    return torch.addcmul(out, probe.to(out.dtype).view(-1, *([1] * (out.dim() - 1))), constant.detach())


def add_mask(scores: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool) -> torch.Tensor:
    """Attention scores with a mask applied as ``F.scaled_dot_product_attention`` reads it.

    A boolean ``attn_mask`` attends where ``True``, another is added; ``is_causal`` masks the future.
    """
    n, m = scores.shape[-2:]
    if is_causal:
        return scores + scores.new_full((n, m), float("-inf")).triu(1)
    if attn_mask is None:
        return scores
    if attn_mask.dtype == torch.bool:
        return scores.masked_fill(~attn_mask, float("-inf"))
    return scores + attn_mask


class _ValueAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, attn_mask, is_causal):  # noqa: D102 - see value_attention
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=0.0, is_causal=is_causal)
        ctx.is_causal = is_causal
        ctx.save_for_backward(q, k, attn_mask)
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: D102 - see value_attention
        q, k, attn_mask = ctx.saved_tensors
        scores = (q @ k.transpose(-2, -1)).mul_(q.shape[-1] ** -0.5)
        weights = add_mask(scores, attn_mask, ctx.is_causal).softmax(dim=-1)
        return None, None, weights.transpose(-2, -1) @ grad, None, None


def value_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v)`` with a gradient through ``v`` only (CP-LRP).

    The attention weights are held constant: the backward recomputes them and passes ``weights^T @ grad``
    to ``v`` and nothing to ``q`` and ``k``, a fraction of the cost of the fused kernel's full backward.

    Parameters
    ----------
    q, k, v : torch.Tensor
        ``[B, heads, N, head_dim]`` queries, keys and values; the scale is ``head_dim ** -0.5``.
    attn_mask : torch.Tensor, optional
        Boolean (``True`` attends) or additive mask, as for ``F.scaled_dot_product_attention``.
    is_causal : bool
        Causal masking.

    Returns
    -------
    torch.Tensor
        The attention output, bit for bit that of ``F.scaled_dot_product_attention`` without dropout.
    """
    return _ValueAttention.apply(q, k, v, attn_mask, bool(is_causal))


class _LinearRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, gamma, factor, probe):  # noqa: D102 - see gamma_linear
        out = F.linear(x, weight, bias)
        ctx.gamma, ctx.cast = gamma, _probe_dtype(probe, x)
        keep_x = gamma > 0 or ctx.needs_input_grad[1]
        ctx.save_for_backward(x if keep_x else None, weight, bias, out if gamma > 0 else None, factor)
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: D102 - see gamma_linear
        x, weight, bias, out, factor = ctx.saved_tensors
        if factor is not None:
            grad = grad * factor
        if ctx.gamma > 0:
            grad_x, grad_probe = _gamma_backward(ctx, grad, x, weight, bias, out)
            return grad_x, None, None, None, None, grad_probe
        needs = ctx.needs_input_grad
        grad_x = grad.matmul(weight) if needs[0] else None
        grad_weight = grad_bias = None
        if needs[1] or needs[2]:  # parameters that require grad get their plain gradient
            rows = grad.reshape(-1, grad.shape[-1])
            grad_weight = rows.t().mm(x.reshape(-1, x.shape[-1])) if needs[1] else None
            grad_bias = rows.sum(0) if needs[2] else None
        return grad_x, grad_weight, grad_bias, None, None, _probe_grad(ctx, grad, bias) if needs[5] else None


def _gamma_backward(ctx, grad, x, weight, bias, out):
    """The input gradient and the per-row bias relevance of the LRP-gamma rule (see gamma_linear)."""
    gamma = ctx.gamma
    relevance = out * grad
    w_up = weight + gamma * weight.clamp(min=0)
    w_down = weight + gamma * weight.clamp(max=0)
    x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
    b_up = b_down = None
    if bias is not None:
        b_up = bias + gamma * bias.clamp(min=0)
        b_down = bias + gamma * bias.clamp(max=0)
    pos, neg = out > 0, out < 0
    denom_pos = F.linear(x_pos, w_up, b_up) + F.linear(x_neg, w_down)
    denom_neg = F.linear(x_pos, w_down, b_down) + F.linear(x_neg, w_up)
    # |denominator| >= |out| > 0 wherever it is used, so no stabiliser is needed.
    c_pos = torch.where(pos, relevance / torch.where(pos, denom_pos, 1), 0)
    c_neg = torch.where(neg, relevance / torch.where(neg, denom_neg, 1), 0)
    grad_x = torch.where(x > 0, c_pos @ w_up + c_neg @ w_down, c_pos @ w_down + c_neg @ w_up)
    grad_probe = None
    if ctx.needs_input_grad[5]:
        if bias is None:
            grad_probe = out.new_zeros(len(out))
        else:
            grad_probe = (c_pos * b_up + c_neg * b_down).reshape(len(out), -1).sum(1)
        grad_probe = grad_probe if ctx.cast is None else grad_probe.to(ctx.cast)
    return grad_x, grad_probe


def gamma_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    gamma: float,
    probe: torch.Tensor | None = None,
    factor: torch.Tensor | None = None,
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` whose backward applies the generalised LRP-gamma rule.

    With ``W+ = W + gamma * max(W, 0)``, ``W- = W + gamma * min(W, 0)`` (and likewise for the bias), the
    relevance ``R = out * grad_out`` of a positive output is shared in proportion to
    ``x+ W+ + x- W- + b+``, that of a negative output in proportion to ``x+ W- + x- W+ + b-`` (``x+`` and
    ``x-`` the positive and negative parts of the input). This is zennit's ``Gamma`` rule without its
    stabiliser, which is not needed since each denominator is at least as large as the output in
    magnitude; the input and bias relevance sum to ``R`` exactly. ``gamma = 0`` is the plain gradient.

    Parameters
    ----------
    x : torch.Tensor
        ``[B, ..., in]``.
    weight, bias : torch.Tensor
        ``[out, in]`` and ``[out]`` (or None).
    gamma : float
        Weight of the positive contributions, ``>= 0``.
    probe : torch.Tensor, optional
        ``[B]`` zeros requiring grad: its gradient receives the relevance absorbed by the bias per row
        (see :func:`absorb`).
    factor : torch.Tensor, optional
        ``[out]``: the incoming gradient is first multiplied by it, per output channel (as
        :func:`scale_gradient` on the output would do, one factor per channel).

    Returns
    -------
    torch.Tensor
        ``F.linear(x, weight, bias)``.
    """
    return _LinearRule.apply(x, weight, bias, float(gamma), factor, probe)
