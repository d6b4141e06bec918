"""Interlayer insertion and deletion: the target as ranked source latents are put back into, or taken out of,
the SAE path.

The *blank* is the reconstruction from no latents: ``recon(0)`` (the decoder bias) at every token the source
SAE reads, **plus the error node** ``e`` with ``error="keep"`` (the default) or **without it** with
``error="drop"``. Unread tokens (the class token for a patch-token SAE) keep their value throughout.

* Insertion starts from the blank and puts active source latents back, most relevant first; the last point
  holds every latent: the hidden state itself with ``"keep"`` (so the curve ends at the model's own value),
  the SAE's reconstruction with ``"drop"``.
* Deletion starts from every latent and takes them out, most relevant first, down to the blank.

The conventions are those of the patch-level tests (cafe-plugin-faithfulness): the curve is divided by the
target's value with every latent present (a row where it is zero or not finite scores NaN), clamped to
``[0, 1]`` with ``clip=True``, and scored by its trapezoidal area over the fraction of units changed. A
*unit* is an active (latent, token) pair (``unit="pair"``) or a latent at all its tokens at once
(``unit="latent"``, ranked by its relevance summed over tokens); inactive ones change nothing and are not
counted. Since images differ in how many units are active, the curve has ``points`` points at the same
fractions ``0, 1/(points-1), ..., 1`` of each row's units (rounded to whole units).
"""

from __future__ import annotations

import math

import torch

from cafe_core.protocols import MetricResult, RunContext

from .attribution import InterlayerAttribution
from .path_gradients import path_values
from .readout import LatentReadout
from .splice import Source

__all__ = ["InterlayerCurve", "InterlayerDeletion", "InterlayerInsertion", "unit_ranks"]


def unit_ranks(scores: torch.Tensor, activations: torch.Tensor, unit: str = "pair") -> tuple[torch.Tensor, torch.Tensor]:
    """Each unit's rank (0 = most relevant) and each row's number of active units.

    Parameters
    ----------
    scores, activations : torch.Tensor
        ``[N, Tc, d_sae]`` relevance (only its order matters) and the source latents.
    unit : {"pair", "latent"}
        Rank (latent, token) pairs, or latents by their relevance summed over the tokens where they are active.

    Returns
    -------
    rank : torch.Tensor
        ``[N, Tc, d_sae]`` (pairs) or ``[N, 1, d_sae]`` (latents); inactive units rank after every active one.
        Ties keep the order of the flattened index (a stable sort).
    n_units : torch.Tensor
        ``[N]`` active units.
    """
    active = activations > 0
    if unit == "latent":
        scores = torch.where(active, scores, torch.zeros_like(scores)).sum(1, keepdim=True)
        active = active.any(1, keepdim=True)
    elif unit != "pair":
        raise ValueError(f"unit must be 'pair' or 'latent', got {unit!r}")
    flat = torch.where(active, scores.double(), torch.full_like(scores, -math.inf, dtype=torch.float64)).flatten(1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand(len(flat), -1))
    return rank.reshape(active.shape), active.flatten(1).sum(1)


class InterlayerCurve:
    """Shared implementation of :class:`InterlayerInsertion` and :class:`InterlayerDeletion`.

    Parameters
    ----------
    points : int
        Points of each curve (at least 2), at equal fractions of each row's active units.
    error : {"keep", "drop"}
        Whether the blank (and every point) holds the error node (see the module's description).
    unit : {"pair", "latent"}
        What is inserted or deleted at once.
    clip : bool
        Clamp the normalised curve to ``[0, 1]`` before taking its area.
    """

    name = ""
    inserting = True
    higher_is_better = True

    def __init__(self, points: int = 21, error: str = "keep", unit: str = "pair", clip: bool = True) -> None:
        if points < 2:
            raise ValueError(f"points must be at least 2, got {points}")
        if error not in ("keep", "drop"):
            raise ValueError(f"error must be 'keep' or 'drop', got {error!r}")
        self.points, self.error, self.unit, self.clip = int(points), error, unit, bool(clip)

    def evaluate(self, source: Source, readout: LatentReadout, x: torch.Tensor, attribution: InterlayerAttribution,
                 context: RunContext) -> MetricResult:
        """Score the ranking of ``attribution.latents`` for each row.

        Returns
        -------
        MetricResult
            ``score [N]`` the area under ``curve [N, S]`` over ``fractions [S]``; ``raw_curve`` before
            clipping; ``info``: ``full_z`` (the value the curve is divided by), ``blank_z`` (the value at the
            blank), ``raw_auc`` and ``units`` (active units per row).
        """
        n, s = len(x), self.points
        rank, n_units = unit_ranks(attribution.latents, attribution.activations, self.unit)
        fractions = torch.linspace(0, 1, s, dtype=torch.float64)
        counts = torch.floor(fractions[None, :] * n_units[:, None].double() + 0.5).long()
        rank, counts = rank.to(x.device), counts.to(x.device)
        keep_error = self.error == "keep"
        values = []
        for items in context.chunks(n * s):
            index = torch.arange(n * s)[items]
            rows, steps = index // s, index % s
            present = rank[rows.to(x.device)] < counts[rows, steps].view(-1, 1, 1)
            if not self.inserting:
                present = ~present

            def edit(z: torch.Tensor, e: torch.Tensor, present: torch.Tensor = present):
                return z * present.to(z.dtype), e if keep_error else torch.zeros_like(e)

            value, _ = path_values(source, readout.select(rows), x[rows], edit=edit)
            values.append(value)
        curve = torch.cat(values).double().reshape(n, s)
        full_z = curve[:, -1] if self.inserting else curve[:, 0]
        blank_z = curve[:, 0] if self.inserting else curve[:, -1]
        valid = torch.isfinite(full_z) & (full_z != 0)
        raw = curve / torch.where(valid, full_z, torch.ones_like(full_z))[:, None]
        raw = torch.where(valid[:, None], raw, torch.full_like(raw, math.nan))
        scored = raw.clamp(0.0, 1.0) if self.clip else raw
        return MetricResult(
            score=torch.trapezoid(scored, fractions, dim=1), curve=scored, raw_curve=raw, fractions=fractions,
            info={"full_z": full_z, "blank_z": blank_z, "raw_auc": torch.trapezoid(raw, fractions, dim=1),
                  "units": n_units},
        )


class InterlayerInsertion(InterlayerCurve):
    """Insertion of source latents into the blank, most relevant first (higher area is better)."""

    name = "interlayer_insertion"
    inserting = True
    higher_is_better = True


class InterlayerDeletion(InterlayerCurve):
    """Deletion of source latents, most relevant first, down to the blank (lower area is better)."""

    name = "interlayer_deletion"
    inserting = False
    higher_is_better = False
