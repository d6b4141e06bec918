"""Adaptive resolution of insertion and deletion curves: a coarse grid first, then bisection where the curve moves.

The curve of one row is known at some indices of its grid of ``S`` points (``fractions [S]``, increasing,
``fractions[0] = 0``). Between two consecutive evaluated points ``i < j`` the unevaluated ones are filled by
linear interpolation, so the trapezoid area over the whole grid equals the trapezoid area over the evaluated
points alone.

**Error bound.** Write ``t_i < ... < t_j`` for the grid fractions of the interval, ``W = t_j - t_i``,
``d = |f(t_j) - f(t_i)|``, and ``g_first = t_{i+1} - t_i``, ``g_last = t_j - t_{j-1}`` for its first and last
gaps. *If the curve is monotone on the interval*, the area the full-resolution trapezoid rule gives there
differs from the interpolated one by at most::

    d * (W - min(g_first, g_last)) / 2

The difference is linear in the unevaluated values; over the monotone curves with the two end values it is
extreme at a step just after ``t_i`` or just before ``t_j``, where it is ``d * (W - g_first) / 2`` and
``d * (W - g_last) / 2``. The bound is 0 for adjacent points (nothing skipped) and for a flat interval. A
row's bound is the sum over its intervals, and refinement stops when it is at most the tolerance.

Nothing guarantees monotonicity: a curve that rises and falls back between two evaluated points can be
missed entirely. Without the assumption, the only bound the clipped range ``[0, 1]`` gives is at least half
the unevaluated width, which would leave almost nothing unevaluated; so the stated bound is conditional on
monotonicity within every interval left unrefined, and a finer initial grid shortens those intervals.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["adaptive_points", "interpolate", "interval_bounds", "previous_known"]


def previous_known(known: torch.Tensor) -> torch.Tensor:
    """Index of the last evaluated point at or before each point: ``[B, S]`` (``-1`` before the first)."""
    index = torch.arange(known.shape[1], device=known.device).expand_as(known)
    return torch.where(known, index, torch.full_like(index, -1)).cummax(dim=1).values


def _next_known(known: torch.Tensor) -> torch.Tensor:
    """Index of the first evaluated point at or after each point: ``[B, S]``."""
    return known.shape[1] - 1 - previous_known(known.flip(1)).flip(1)


def interval_bounds(curve: torch.Tensor, known: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """Monotone-case bound on the area error of each interval between evaluated points.

    Parameters
    ----------
    curve : torch.Tensor
        ``[B, S]`` the curve, read only where ``known``.
    known : torch.Tensor
        Boolean ``[B, S]``: the evaluated points; the first and last of every row must be evaluated.
    fractions : torch.Tensor
        ``[S]`` increasing x-axis.

    Returns
    -------
    torch.Tensor
        ``[B, S]``: at each evaluated point ``j > 0``, ``|curve[j] - curve[i]| * (W - min(g_first, g_last)) / 2``
        for the interval from the previous evaluated point ``i`` (see the module's docstring); 0 elsewhere.
        NaN where the curve is NaN.
    """
    s = known.shape[1]
    j = torch.arange(s, device=known.device).expand_as(known)
    i = torch.cat([torch.zeros_like(j[:, :1]), previous_known(known)[:, :-1]], dim=1)
    ends = known & (j > 0)
    width = fractions[j] - fractions[i]
    first_gap = fractions[(i + 1).clamp(max=s - 1)] - fractions[i]
    last_gap = fractions[j] - fractions[(j - 1).clamp(min=0)]
    moved = (curve.gather(1, j) - curve.gather(1, i)).abs()
    bound = moved * (width - torch.minimum(first_gap, last_gap)) / 2
    return torch.where(ends, bound, torch.zeros_like(bound))


def _bisections(bounds: torch.Tensor, known: torch.Tensor, tolerance: float) -> torch.Tensor:
    """The midpoints to evaluate next: in each row, the intervals of largest bound, as few as leave the rest
    of the row's bound at most ``tolerance``. Boolean ``[B, S]``."""
    bounds = bounds.nan_to_num(0.0)
    ranked, order = bounds.sort(dim=1, descending=True)
    left_before = bounds.sum(dim=1, keepdim=True) - (ranked.cumsum(dim=1) - ranked)
    chosen = torch.zeros_like(known).scatter(1, order, (left_before > tolerance) & (ranked > 0))
    rows, ends = chosen.nonzero(as_tuple=True)
    starts = previous_known(known)[rows, ends - 1]
    midpoints = torch.zeros_like(known)
    midpoints[rows, (starts + ends) // 2] = True
    return midpoints


def adaptive_points(
    evaluate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scored: Callable[[torch.Tensor], torch.Tensor],
    n_rows: int,
    counts: torch.Tensor,
    initial_stride: int,
    tolerance: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Evaluate every ``initial_stride``-th point and both ends, then bisect until each row's bound holds.

    Parameters
    ----------
    evaluate : callable
        ``evaluate(rows, indices)`` the latent at point ``indices[p]`` of row ``rows[p]``: ``[P]``. Called
        once per round with all of the round's new points.
    scored : callable
        ``scored(values)`` the curve the area is taken of (normalised, clipped), ``[B, S]`` from the latent
        values ``[B, S]`` (which hold NaN at points not yet evaluated; both ends are always evaluated).
    n_rows : int
        ``B``.
    counts : torch.Tensor
        ``[S]`` increasing integers from 0: the patches changed at each point of the grid; the x-axis is
        ``counts / counts[-1]``.
    initial_stride : int
        Spacing, in grid points, of the first round.
    tolerance : float
        Largest sum of the interval bounds (:func:`interval_bounds`) a row may keep.

    Returns
    -------
    values : torch.Tensor
        ``[B, S]`` the latent at the evaluated points, NaN elsewhere.
    known : torch.Tensor
        Boolean ``[B, S]``: the evaluated points.
    bound : torch.Tensor
        ``[B]`` the sum of the row's interval bounds on the scored curve (NaN where the curve is NaN).
    """
    s = len(counts)
    known = torch.zeros(n_rows, s, dtype=torch.bool, device=counts.device)
    known[:, ::initial_stride] = True
    known[:, -1] = True
    values: torch.Tensor | None = None
    new = known
    while new.any():
        rows, indices = new.nonzero(as_tuple=True)
        z = evaluate(rows, indices)
        if values is None:
            dtype = torch.promote_types(z.dtype, torch.float32)
            values = torch.full((n_rows, s), torch.nan, dtype=dtype, device=counts.device)
            fractions = counts.to(dtype) / counts[-1]
        values[rows, indices] = z.to(values.device)
        bounds = interval_bounds(scored(values), known, fractions)
        new = _bisections(bounds, known, tolerance)
        known = known | new
    return values, known, bounds.sum(dim=1)


def interpolate(curve: torch.Tensor, known: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """``curve [B, S]`` with every point not ``known`` replaced by linear interpolation (over ``fractions``)
    between the nearest evaluated points on either side."""
    i, j = previous_known(known), _next_known(known)
    fi, fj = fractions[i], fractions[j]
    span = torch.where(j > i, fj - fi, torch.ones_like(fj))
    weight = (fractions.expand_as(fi) - fi) / span
    line = curve.gather(1, i) + weight * (curve.gather(1, j) - curve.gather(1, i))
    return torch.where(known, curve, line)
