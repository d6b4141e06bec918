"""Conformance checks a plugin author calls from their own tests.

Each ``check_*`` function raises :class:`ConformanceError` listing every violated rule, and returns what it
computed so a test can check more on top::

    from cafe_core.testing import check_attributor

    def test_my_method(backbone, sae, images):
        target = TargetFunction(backbone, sae, layer=2, latents=[3, 7], positions=[5, 0])
        check_attributor(MyMethod(), target, images)
"""

from __future__ import annotations

from typing import Any

import torch

from ..protocols import Attribution, MetricResult, RunContext, TargetFunction, layer_grid, layer_width
from .model_state import snapshot

__all__ = ["ConformanceError", "check_attributor", "check_backbone", "check_metric", "check_sae"]


class ConformanceError(AssertionError):
    """A component breaks its protocol; the message lists every broken rule."""


def _raise_if(problems: list[str], what: str) -> None:
    if problems:
        raise ConformanceError(f"{what} breaks {len(problems)} rule(s):\n  - " + "\n  - ".join(problems))


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True)


def check_attributor(
    attributor: Any,
    target: TargetFunction,
    x: torch.Tensor,
    context: RunContext | None = None,
    *,
    rtol: float = 1e-4,
    atol: float = 1e-6,
    conservation_rtol: float = 1e-3,
) -> Attribution:
    """Check an attributor on one batch.

    Rules: an :class:`Attribution` with a finite ``[B, gh, gw]`` heatmap; the same result twice
    (determinism, with the same context seed); each row equal to that row explained alone (batch
    invariance); the model's hooks, methods, gradients, modes and parameters unchanged, and ``target(x)``
    unchanged; capability flags present; and, where ``conserves_relevance`` is claimed, the heatmap plus the
    relevance absorbed by biases (``info["absorbed"]``, zero if absent) summing to ``z`` within
    ``conservation_rtol`` of ``|z|``.

    Returns
    -------
    Attribution
        The first call's result.
    """
    context = context or RunContext(batch_size=max(1, len(x)))
    model = target.backbone.model
    problems = []
    for flag in ("needs_grad", "conserves_relevance"):
        if not isinstance(getattr(attributor, flag, None), bool):
            problems.append(f"capability flag `{flag}` missing or not a bool")
    with torch.no_grad():
        z_before = target(x)
    state_before = snapshot(model)
    first = attributor.attribute(target, x, context)
    state_after = snapshot(model)
    problems += [f"model state: {d}" for d in state_before.differences(state_after)]
    with torch.no_grad():
        z_after = target(x)
    if not _close(z_before, z_after, 0, 0):
        problems.append("target(x) differs after the call: the model was left modified")
    if not isinstance(first, Attribution):
        _raise_if(problems + [f"returned {type(first).__name__}, not Attribution"], type(attributor).__name__)
    expected = (len(x), *target.backbone.grid_size)
    if tuple(first.heatmap.shape) != expected:
        problems.append(f"heatmap shape {tuple(first.heatmap.shape)}, expected {expected}")
    elif not torch.isfinite(first.heatmap).all():
        problems.append("heatmap has NaN or infinite values")
    else:
        second = attributor.attribute(target, x, context)
        if not _close(first.heatmap, second.heatmap, rtol, atol):
            problems.append("not deterministic: two calls with the same context differ")
        for i in range(len(x)):
            alone = attributor.attribute(target.select([i]), x[i : i + 1], context).heatmap
            if not _close(first.heatmap[i : i + 1], alone, rtol, max(atol, 1e-5 * float(alone.abs().max()))):
                problems.append(f"row {i} differs when explained alone (batch invariance)")
                break
        if getattr(attributor, "conserves_relevance", False):
            absorbed = first.info.get("absorbed", torch.zeros(len(x)))
            total = first.heatmap.flatten(1).sum(1) + absorbed.to(first.heatmap)
            error = (total - z_before.to(total)).abs()
            limit = conservation_rtol * z_before.abs().to(total) + atol
            if (error > limit).any():
                problems.append(f"claims conservation but heatmap + absorbed - z = {error.tolist()}")
    for name, values in first.info.items():
        if not (torch.is_tensor(values) and values.shape == (len(x),)):
            problems.append(f"info[{name!r}] must be a tensor of shape [{len(x)}]")
    _raise_if(problems, type(attributor).__name__)
    return first


def check_metric(
    metric: Any,
    target: TargetFunction,
    x: torch.Tensor,
    heatmap: torch.Tensor,
    context: RunContext | None = None,
    *,
    annotations: list[dict] | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-6,
) -> MetricResult:
    """Check a metric on one batch.

    Rules: a :class:`MetricResult` with a ``[B]`` score, finite except where undefined (NaN); curves
    ``[B, S]`` over non-decreasing ``fractions`` in ``[0, 1]``; ``higher_is_better`` True, False or None; determinism;
    batch invariance; scores inside ``metric.score_range`` when declared; and, for a metric declaring
    ``ranking_based = True``, the same score for any strictly increasing transform of the heatmap. Every call
    passes ``annotations`` (one ``ImageItem.info`` per row; empty dicts when not given), as a run does.
    """
    context = context or RunContext(batch_size=max(1, len(x)))
    problems = []
    given = annotations if annotations is not None else [{} for _ in range(len(x))]

    def evaluate(t, xs, h, c, rows=None):
        picked = given if rows is None else [given[i] for i in rows]
        return metric.evaluate(t, xs, h, c, annotations=picked)

    if not hasattr(metric, "higher_is_better") or metric.higher_is_better not in (True, False, None):
        problems.append("`higher_is_better` missing or not True, False or None")
    result = evaluate(target, x, heatmap, context)
    if not isinstance(result, MetricResult):
        _raise_if(problems + [f"returned {type(result).__name__}, not MetricResult"], type(metric).__name__)
    if tuple(result.score.shape) != (len(x),):
        problems.append(f"score shape {tuple(result.score.shape)}, expected ({len(x)},)")
    if result.curve is not None:
        if result.curve.dim() != 2 or result.curve.shape[0] != len(x):
            problems.append(f"curve shape {tuple(result.curve.shape)}, expected [{len(x)}, S]")
        if result.fractions is not None:
            f = result.fractions
            if f.shape[-1] != result.curve.shape[-1] or (f < 0).any() or (f > 1).any() or (f.diff() < 0).any():
                problems.append("fractions must match the curve length, lie in [0, 1] and not decrease")
    again = evaluate(target, x, heatmap, context)
    if not _close(result.score, again.score, rtol, atol):
        problems.append("not deterministic")
    for i in range(len(x)):
        alone = evaluate(target.select([i]), x[i : i + 1], heatmap[i : i + 1], context, [i]).score
        if not _close(result.score[i : i + 1], alone, rtol, atol):
            problems.append(f"row {i} differs when scored alone (batch invariance)")
            break
    score_range = getattr(metric, "score_range", None)
    finite = result.score[torch.isfinite(result.score)]
    if score_range is not None and ((finite < score_range[0] - atol) | (finite > score_range[1] + atol)).any():
        problems.append(f"scores {finite.tolist()} outside the declared range {score_range}")
    if getattr(metric, "ranking_based", False):
        transformed = evaluate(target, x, torch.exp(heatmap / heatmap.abs().max().clamp_min(1e-12)), context)
        if not _close(result.score, transformed.score, rtol, atol):
            problems.append("declares ranking_based but a strictly increasing transform of the heatmap changes the score")
    _raise_if(problems, type(metric).__name__)
    return result


def check_backbone(backbone: Any, x: torch.Tensor) -> dict[int, torch.Tensor]:
    """Check the token geometry and the layer contract of a backbone on inputs ``x [B, 3, H, W]``.

    Rules: every attribute of the protocol present; ``forward_to(x, L)`` of shape
    ``[B, len(prefix_tokens) + h * w, layer_width(L)]`` (``(h, w) = layer_grid(L)``, the heatmap grid and
    ``width`` for a backbone without per-layer grids) for every ``L`` in ``0..depth-1``, deterministic and batch
    invariant; ``grid_size * patch_size == image_size``; layers outside ``0..depth-1`` rejected.

    Returns
    -------
    dict
        ``{layer: tokens}`` for every layer.
    """
    problems = []
    for attr in ("model", "depth", "width", "image_size", "patch_size", "grid_size", "prefix_tokens"):
        if not hasattr(backbone, attr):
            problems.append(f"missing attribute `{attr}`")
    _raise_if(problems, type(backbone).__name__)
    gh, gw = backbone.grid_size
    if (gh * backbone.patch_size[0], gw * backbone.patch_size[1]) != tuple(backbone.image_size):
        problems.append(f"grid {backbone.grid_size} x patch {backbone.patch_size} != image size {backbone.image_size}")
    outputs = {}
    with torch.no_grad():
        for layer in range(backbone.depth):
            h, w = layer_grid(backbone, layer)
            expected = (len(x), len(backbone.prefix_tokens) + h * w, layer_width(backbone, layer))
            tokens = backbone.forward_to(x, layer)
            outputs[layer] = tokens
            if tuple(tokens.shape) != expected:
                problems.append(f"forward_to(x, {layer}) has shape {tuple(tokens.shape)}, expected {expected}")
                continue
            if not _close(tokens, backbone.forward_to(x, layer), 1e-5, 1e-6):
                problems.append(f"forward_to(x, {layer}) is not deterministic")
            if not _close(tokens[:1], backbone.forward_to(x[:1], layer), 1e-4, 1e-5):
                problems.append(f"forward_to(x, {layer}) of the first image depends on the rest of the batch")
        for bad in (-1, backbone.depth):
            try:
                backbone.forward_to(x, bad)
            except Exception:  # noqa: BLE001 - any clear error is acceptable
                continue
            problems.append(f"forward_to(x, {bad}) did not raise: layers are 0..{backbone.depth - 1}")
    _raise_if(problems, type(backbone).__name__)
    return outputs


def check_sae(sae: Any, h: torch.Tensor, *, rtol: float = 1e-5, atol: float = 1e-6) -> torch.Tensor:
    """Check an SAE on hidden states ``h [N, d_in]``.

    Rules: ``encode`` gives ``[N, d_sae]``, ``decode`` gives ``[N, d_in]``; ``encode_latents(h, n)`` equals
    ``encode(h)[i, n_i]`` and so does its gradient with respect to ``h``.

    Returns
    -------
    torch.Tensor
        ``encode(h)``.
    """
    problems = []
    codes = sae.encode(h)
    if tuple(codes.shape) != (len(h), sae.d_sae):
        problems.append(f"encode gives {tuple(codes.shape)}, expected ({len(h)}, {sae.d_sae})")
    if tuple(sae.decode(codes).shape) != tuple(h.shape):
        problems.append("decode does not return the input's shape")
    latents = torch.argmax(codes, dim=1) if codes.dim() == 2 else torch.zeros(len(h), dtype=torch.long)
    hx = h.detach().clone().requires_grad_(True)
    picked = sae.encode_latents(hx, latents)
    reference = codes.gather(1, latents[:, None]).squeeze(1)
    if not _close(picked.detach(), reference.detach(), rtol, atol):
        problems.append("encode_latents(h, n) differs from encode(h)[i, n_i]")
    (grad,) = torch.autograd.grad(picked.sum(), hx)
    hr = h.detach().clone().requires_grad_(True)
    (grad_ref,) = torch.autograd.grad(sae.encode(hr).gather(1, latents[:, None]).sum(), hr)
    if not _close(grad, grad_ref, rtol, atol):
        problems.append("the gradient of encode_latents differs from that of encode")
    _raise_if(problems, type(sae).__name__)
    return codes
