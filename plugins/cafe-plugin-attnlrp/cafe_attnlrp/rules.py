"""LRP rules written as modified gradients: each op leaves the forward value unchanged.

In the gradient x input formulation of LRP, the relevance of a tensor ``t`` is ``t * dz/dt`` where the
derivative is taken through ops whose backward implements a propagation rule instead of the true gradient.
Every function here returns exactly the value the unmodified model computes (so a patched model still
produces the same outputs) and changes only what flows backward.

References
----------
.. [1] R. Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for Transformers",
   ICML 2024.
.. [2] A. Ali et al., "XAI for Transformers: Better Explanations through Conservative Propagation",
   ICML 2022.
.. [3] G. Montavon et al., "Layer-Wise Relevance Propagation: An Overview", 2019 (the gamma rule).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "absorb",
    "gamma_linear",
    "identity_rule",
    "layer_norm_rule",
    "scale_gradient",
    "stop_gradient",
    "straight_through",
]

_INV_SQRT2 = 0.7071067811865476


class _IdentityRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        out = fn(x)
        if ctx.needs_input_grad[0]:
            if _is_exact_gelu(fn):
                # gelu(x) / x is the normal CDF: no division, and defined at 0.
                ratio = torch.erf(x * _INV_SQRT2).add_(1).mul_(0.5)
            else:
                zero = x == 0
                # At x == 0 the relevance x * grad is zero whatever the ratio; 0 keeps it finite.
                ratio = torch.where(zero, torch.zeros_like(out), out / torch.where(zero, 1, x))
            ctx.save_for_backward(ratio)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (ratio,) = ctx.saved_tensors
        return grad * ratio, None


def identity_rule(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` for an element-wise ``fn``, with relevance passed through unchanged (the identity rule).

    The backward multiplies the incoming gradient by ``fn(x) / x`` (zero where ``x == 0``), so that
    ``x * grad_x == fn(x) * grad_out``: the relevance of each element is carried over as is.

    Parameters
    ----------
    fn : callable
        Element-wise activation (GELU, SiLU...), not in-place.
    x : torch.Tensor
        Its input.

    Returns
    -------
    torch.Tensor
        ``fn(x)``, bit for bit.
    """
    return _IdentityRule.apply(x, fn)


def _is_exact_gelu(fn: Callable) -> bool:
    module = getattr(fn, "__self__", fn)  # a module, or its bound forward
    return (isinstance(module, torch.nn.GELU) and module.approximate == "none") or fn is F.gelu


class _LayerNormRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, fn, dims, weight, eps):  # noqa: D102 - see layer_norm_rule
        out = fn(x)
        if ctx.needs_input_grad[0]:
            inv_std = torch.rsqrt(x.var(dim=dims, unbiased=False, keepdim=True).add_(eps))
            ctx.dims = dims
            ctx.save_for_backward(inv_std if weight is None else inv_std * weight.detach())
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: D102 - see layer_norm_rule
        (scale,) = ctx.saved_tensors
        g = grad * scale
        return g - g.mean(dim=ctx.dims, keepdim=True), None, None, None, None


def layer_norm_rule(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dims: tuple[int, ...], weight, eps: float
) -> torch.Tensor:
    """``fn(x)`` for a LayerNorm ``fn``, with the identity rule on the normalisation (AttnLRP).

    The backward treats the standard deviation as a constant while the mean subtraction stays
    differentiable: ``grad_x = g - mean(g)`` over ``dims`` with ``g = grad_out * weight / std``, the gradient
    of ``(x - mean(x)) / std.detach() * weight + bias``.

    Parameters
    ----------
    fn : callable
        The LayerNorm module (its value is returned bit for bit).
    x : torch.Tensor
        Its input.
    dims : tuple of int
        The normalised dimensions (negative).
    weight : torch.Tensor or None
        The elementwise scale.
    eps : float
        The variance epsilon.
    """
    return _LayerNormRule.apply(x, fn, dims, weight, eps)


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
    return out + probe.to(out.dtype).view(-1, *([1] * (out.dim() - 1))) * constant.detach()


class _GammaLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, probe, gamma):
        out = F.linear(x, weight, bias)
        ctx.gamma = gamma
        ctx.probe_dtype = None if probe is None else probe.dtype
        ctx.save_for_backward(x, weight, bias, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias, out = ctx.saved_tensors
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
        if ctx.needs_input_grad[3]:
            if bias is None:
                grad_probe = out.new_zeros(len(out))
            else:
                grad_probe = (c_pos * b_up + c_neg * b_down).reshape(len(out), -1).sum(1)
            grad_probe = grad_probe.to(ctx.probe_dtype)
        return grad_x, None, None, grad_probe, None


def gamma_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    gamma: float,
    probe: torch.Tensor | None = None,
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

    Returns
    -------
    torch.Tensor
        ``F.linear(x, weight, bias)``.
    """
    return _GammaLinear.apply(x, weight, bias, probe, float(gamma))
