"""How far an explanation lies from the token that fired: mass outside its neighbourhood, distance, agreement.

Three descriptive per-target scores that complement ``own_patch_share``:

``nonlocal_mass``
    The share of the positive relevance outside the fired patch's neighbourhood: the patches within
    ``radius`` rows and columns of it (a ``(2 radius + 1)``-square, cut at the image border; radius 1 by
    default, the patch and its eight neighbours).
``relevance_distance``
    The distance, in patches, from the fired patch to the centre of mass of the positive relevance.
``activation_agreement``
    The rank correlation (Spearman) between the latent's activation map and the heatmap: near 1 when the
    explanation ranks patches as the activations do, near 0 or below when the cause lies elsewhere.

The fired patch is the heatmap patch holding the target token's own cell
(:func:`cafe_core.protocols.own_patch`); targets on a prefix token (a class token, a register) have none, so
the first two scores are NaN there, while their centre of mass is still reported in ``info``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from cafe_core.errors import IncompatibleComponentError
from cafe_core.protocols import Backbone, MetricResult, RunContext, TargetFunction, layer_grid, own_patch

from .heatmap_metric import HeatmapMetric

__all__ = [
    "ActivationAgreement",
    "NonlocalMass",
    "RelevanceDistance",
    "activation_maps",
    "centre_of_mass",
    "mass_outside",
    "spearman",
]


def _positive(heatmap: torch.Tensor) -> torch.Tensor:
    return heatmap.detach().double().clamp_min(0)


def _fired_cell(target: TargetFunction) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row, column (heatmap grid) and whether the target token has a patch, per row."""
    gw = target.backbone.grid_size[1]
    patch = own_patch(target.backbone, target.layer, target.positions).cpu()
    return torch.div(patch.clamp_min(0), gw, rounding_mode="floor"), patch.clamp_min(0) % gw, patch >= 0


def mass_outside(heatmap: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, radius: int) -> torch.Tensor:
    """Share of each row's positive relevance outside the square of ``radius`` around ``(rows, cols)``.

    Parameters
    ----------
    heatmap : torch.Tensor
        ``[B, gh, gw]``.
    rows, cols : torch.Tensor
        ``[B]`` the centre patch of each row.
    radius : int
        Half-width of the neighbourhood in patches (0: the patch alone).

    Returns
    -------
    torch.Tensor
        ``[B]`` float64 in ``[0, 1]``; NaN for a row without positive relevance.
    """
    positive = _positive(heatmap)
    _, gh, gw = positive.shape
    r = torch.arange(gh)[None, :, None]
    c = torch.arange(gw)[None, None, :]
    near = ((r - rows[:, None, None]).abs() <= radius) & ((c - cols[:, None, None]).abs() <= radius)
    total = positive.flatten(1).sum(1)
    outside = (positive * ~near.to(positive.device)).flatten(1).sum(1)
    return torch.where(total > 0, outside / torch.where(total > 0, total, torch.ones_like(total)), torch.nan)


def centre_of_mass(heatmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column (in patch indices) of the centre of mass of each row's positive relevance.

    Returns
    -------
    tuple of torch.Tensor
        ``[B]`` float64 each; NaN for a row without positive relevance.
    """
    positive = _positive(heatmap)
    _, gh, gw = positive.shape
    total = positive.flatten(1).sum(1)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    row = (positive.sum(2) * torch.arange(gh, dtype=positive.dtype, device=positive.device)).sum(1) / safe
    col = (positive.sum(1) * torch.arange(gw, dtype=positive.dtype, device=positive.device)).sum(1) / safe
    return torch.where(total > 0, row, torch.nan), torch.where(total > 0, col, torch.nan)


def _ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks ``1..n`` of each row of ``values [B, n]``, ties sharing their average rank."""
    b, n = values.shape
    order = values.argsort(dim=1, stable=True)
    sorted_values = values.gather(1, order)
    ranks = torch.empty_like(values)
    for i in range(b):
        _, first, counts = torch.unique_consecutive(sorted_values[i], return_inverse=True, return_counts=True)
        ends = counts.cumsum(0).to(values.dtype)
        average = ends - (counts.to(values.dtype) - 1) / 2
        ranks[i, order[i]] = average[first]
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of the rows of ``a`` and ``b`` (``[B, ...]``), ties at their average rank.

    Returns
    -------
    torch.Tensor
        ``[B]`` float64; NaN for a row where either input is constant.
    """
    ra = _ranks(a.detach().double().flatten(1).cpu())
    rb = _ranks(b.detach().double().flatten(1).cpu())
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    norm = (ra.square().sum(1) * rb.square().sum(1)).sqrt()
    return torch.where(norm > 0, (ra * rb).sum(1) / torch.where(norm > 0, norm, torch.ones_like(norm)), torch.nan)


def _grid_problem(backbone: Backbone, layer: int) -> str | None:
    if tuple(layer_grid(backbone, layer)) == tuple(backbone.grid_size):
        return None
    h, w = layer_grid(backbone, layer)
    gh, gw = backbone.grid_size
    return (
        f"activation_agreement needs one token of layer {layer} per heatmap patch, but that layer of "
        f"{type(backbone).__name__} has {h}x{w} tokens and the heatmap grid is {gh}x{gw}; explain a layer whose "
        "token grid is the heatmap grid, or use nonlocal_mass and relevance_distance instead"
    )


def activation_maps(target: TargetFunction, x: torch.Tensor, context: RunContext) -> torch.Tensor:
    """Each row's latent read at every patch token of its layer: ``[B, gh, gw]`` (no gradients).

    Raises
    ------
    cafe_core.errors.IncompatibleComponentError
        If the layer's token grid is not the heatmap grid.
    """
    backbone = target.backbone
    problem = _grid_problem(backbone, target.layer)
    if problem:
        raise IncompatibleComponentError(problem)
    gh, gw = backbone.grid_size
    n_prefix, n_patches = len(backbone.prefix_tokens), gh * gw
    maps = []
    with torch.no_grad():
        for chunk in context.chunks(len(x)):
            rows = target.select(chunk)
            h = rows.tokens(x[chunk])
            patches = h[:, n_prefix : n_prefix + n_patches].reshape(-1, h.shape[-1])
            latents = rows.latents.to(h.device).repeat_interleave(n_patches)
            maps.append(target.sae.encode_latents(patches, latents).reshape(-1, gh, gw))
    return torch.cat(maps) if maps else x.new_zeros(0, gh, gw)


class NonlocalMass(HeatmapMetric):
    """Share of the positive relevance outside the fired patch's neighbourhood of ``radius`` patches.

    Parameters
    ----------
    radius : int
        Rows and columns around the fired patch that count as its neighbourhood (default 1: a 3x3 square).

    Notes
    -----
    NaN for prefix-token targets and for heatmaps without positive relevance. ``info["positive_total"]``
    holds the positive relevance.
    """

    higher_is_better = None  # descriptive: how non-local the explanation is
    score_range = (0.0, 1.0)

    def __init__(self, radius: int = 1) -> None:
        self.radius = int(radius)

    def score(self, target: TargetFunction, heatmap: torch.Tensor) -> MetricResult:
        """Share of each row's positive relevance outside its fired patch's neighbourhood."""
        rows, cols, has_patch = _fired_cell(target)
        share = mass_outside(heatmap, rows, cols, self.radius)
        return MetricResult(
            score=torch.where(has_patch, share, torch.nan),
            info={"positive_total": _positive(heatmap).flatten(1).sum(1)},
        )


class RelevanceDistance(HeatmapMetric):
    """Distance in patches from the fired patch to the centre of mass of the positive relevance.

    Notes
    -----
    Patches are at integer coordinates (row, column) of the heatmap grid, so a heatmap whose relevance lies
    on the fired patch alone scores 0 and one on its right-hand neighbour scores 1. NaN for prefix-token
    targets and for heatmaps without positive relevance; ``info["com_row"]`` and ``info["com_col"]`` hold
    the centre of mass (defined for prefix-token targets too).
    """

    def score(self, target: TargetFunction, heatmap: torch.Tensor) -> MetricResult:
        """Distance from each row's fired patch to its relevance's centre of mass."""
        rows, cols, has_patch = _fired_cell(target)
        com_row, com_col = centre_of_mass(heatmap)
        distance = torch.hypot(com_row - rows.double(), com_col - cols.double())
        return MetricResult(
            score=torch.where(has_patch, distance, torch.nan), info={"com_row": com_row, "com_col": com_col}
        )


class ActivationAgreement:
    """Spearman rank correlation between the latent's activation map and the heatmap.

    The activation map is the target latent read at every patch token of its layer (one forward pass per
    batch, no gradients), as the ``activation_map`` attributor draws it. NaN where either map is constant
    (a class-token latent silent on every patch, say).
    """

    higher_is_better = None
    score_range = (-1.0, 1.0)
    ranking_based = True

    def check_compatible(self, backbone: Backbone, saes: Sequence[Any] = ()) -> list[str]:
        """Problems that stop the activation map from being read at the layers of ``saes``."""
        found = (_grid_problem(backbone, sae.layer) for sae in saes if getattr(sae, "layer", None) is not None)
        return [problem for problem in found if problem]

    def evaluate(
        self,
        target: TargetFunction,
        x: torch.Tensor,
        heatmap: torch.Tensor,
        context: RunContext,
        annotations: Sequence[dict[str, Any]] | None = None,
    ) -> MetricResult:
        """Rank correlation of each row's heatmap with its activation map (``annotations`` are not used).

        Raises
        ------
        cafe_core.errors.IncompatibleComponentError
            If the target layer's token grid is not the heatmap grid.
        """
        maps = activation_maps(target, x, context)
        return MetricResult(score=spearman(maps, heatmap))
