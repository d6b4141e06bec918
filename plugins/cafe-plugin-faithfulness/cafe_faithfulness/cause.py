"""Cause patches: the smallest set of input patches that holds a stated share of a heatmap's positive relevance."""

from __future__ import annotations

import torch

from cafe_core.patches import rank_patches
from cafe_core.protocols import MetricResult, TargetFunction

from .heatmap_metric import HeatmapMetric

__all__ = ["CausePatches", "cause_counts", "cause_masks", "relevance_concentration"]

# Relative slack on the share reached, so that float32 sums equal to the share count as reaching it.
_SHARE_TOLERANCE = 1e-6


def relevance_concentration(heatmap: torch.Tensor) -> torch.Tensor:
    """Share of the positive relevance held by the ``j`` most relevant patches, for ``j = 0 .. gh * gw``.

    Parameters
    ----------
    heatmap : torch.Tensor
        ``[B, gh, gw]``; patches are ranked by :func:`cafe_core.patches.rank_patches`.

    Returns
    -------
    torch.Tensor
        ``[B, gh * gw + 1]`` float64, non-decreasing from 0 to 1; NaN for a row without positive relevance.
    """
    flat = heatmap.detach().reshape(heatmap.shape[0], -1).double()
    order = rank_patches(flat)
    positive = flat.clamp_min(0).gather(1, order)
    total = positive.sum(1, keepdim=True)
    held = torch.cat([torch.zeros_like(total), positive.cumsum(1)], dim=1)
    return torch.where(total > 0, held / torch.where(total > 0, total, torch.ones_like(total)), torch.nan)


def cause_counts(heatmap: torch.Tensor, share: float = 0.5, top_k: int | None = None) -> torch.Tensor:
    """How many patches the cause set of each row has.

    Parameters
    ----------
    heatmap : torch.Tensor
        ``[B, gh, gw]``.
    share : float
        The share of the positive relevance the set must hold (used when ``top_k`` is None).
    top_k : int, optional
        A fixed number of patches instead (at most the number of patches).

    Returns
    -------
    torch.Tensor
        Long ``[B]``: the smallest ``j`` such that the ``j`` most relevant patches hold at least ``share`` of
        the positive relevance (0 for a row without positive relevance), or ``min(top_k, gh * gw)``.
    """
    b = heatmap.shape[0]
    n = heatmap[0].numel() if b else 0
    if top_k is not None:
        return torch.full((b,), min(int(top_k), n), dtype=torch.long)
    held = relevance_concentration(heatmap)
    reached = held >= share * (1 - _SHARE_TOLERANCE)
    first = torch.where(reached.any(1), reached.double().argmax(1), torch.zeros(b, dtype=torch.long))
    return torch.where(torch.isnan(held[:, -1]), torch.zeros_like(first), first)


def cause_masks(heatmap: torch.Tensor, share: float = 0.5, top_k: int | None = None) -> torch.Tensor:
    """The cause patches of each row as a boolean ``[B, gh, gw]`` mask (see :func:`cause_counts`)."""
    b = heatmap.shape[0]
    counts = cause_counts(heatmap, share, top_k).to(heatmap.device)
    order = rank_patches(heatmap)
    rank_of = torch.empty_like(order)
    rank_of.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand(b, -1))
    return (rank_of < counts[:, None]).reshape(heatmap.shape)


class CausePatches(HeatmapMetric):
    """The cause patches of a heatmap: the fewest most-relevant patches holding ``share`` of its positive relevance.

    Patches are taken in the heatmap's order (:func:`cafe_core.patches.rank_patches`, ties in row-major
    order) until they hold at least ``share`` of the sum of the positive values; with ``top_k`` the set is
    the ``top_k`` most relevant patches instead. The set of a stored heatmap is therefore given by its count:
    the ``count`` first patches of its ranking (:func:`cause_masks` rebuilds it).

    Parameters
    ----------
    share : float
        Share of the positive relevance the set holds, in ``(0, 1]`` (default 0.5).
    top_k : int, optional
        A fixed set size instead of ``share``.

    Notes
    -----
    The score is the set's size as a fraction of all patches (small: the cause is compact).
    ``info["count"]`` is its size in patches, ``info["share_held"]`` the share of the positive relevance it
    actually holds and ``info["positive_total"]`` the positive relevance. ``curve`` is the share held by the
    ``j`` most relevant patches over ``fractions = j / (gh * gw)``. A row without positive relevance has no
    cause set: its score is NaN and its count 0.
    """

    higher_is_better = None  # descriptive: how compact the cause is, not how good the explanation is
    score_range = (0.0, 1.0)

    def __init__(self, share: float = 0.5, top_k: int | None = None) -> None:
        self.share = float(share)
        self.top_k = top_k

    def score(self, target: TargetFunction, heatmap: torch.Tensor) -> MetricResult:
        """Cause sets of ``heatmap [B, gh, gw]``."""
        held = relevance_concentration(heatmap)
        n = held.shape[1] - 1
        counts = cause_counts(heatmap, self.share, self.top_k)
        undefined = torch.isnan(held[:, -1])
        share_held = held.gather(1, counts[:, None]).squeeze(1)
        score = torch.where(undefined, torch.nan, counts.double() / n)
        positive_total = heatmap.reshape(len(heatmap), -1).double().clamp_min(0).sum(1)
        return MetricResult(
            score=score,
            curve=held,
            fractions=torch.arange(n + 1, dtype=torch.float64) / n,
            info={"count": counts.double(), "share_held": share_held, "positive_total": positive_total},
        )
