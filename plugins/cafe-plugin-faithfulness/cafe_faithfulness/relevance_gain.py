"""Symmetric relevance gain: insertion most-relevant-first minus insertion least-relevant-first."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from cafe_core.protocols import Backbone, MetricResult, RunContext, TargetFunction

from .curves import Insertion

__all__ = ["SymmetricRelevanceGain"]


class SymmetricRelevanceGain:
    """Insertion area with the most relevant patches first (MoRF) minus that with the least relevant first (LeRF).

    A heatmap that ranks the patches the model uses first and those it ignores last scores near 1; a ranking
    unrelated to the model scores near 0 whatever the latent's own response to partial images, which is
    what makes the measure *symmetric*: the insertion curve's baseline level cancels out. Both curves are
    those of the ``insertion`` metric with the same params (see :class:`cafe_faithfulness.curves.PatchCurve`),
    the LeRF one ranking the negated heatmap (ties keep row-major order in both).

    Parameters
    ----------
    **params
        Those of :class:`~cafe_faithfulness.curves.Insertion` (``steps``, ``blank``, ``blur_sigma``, ``clip``,
        ``resolution``, ``tolerance``, ``initial_stride``).

    Notes
    -----
    ``curve`` is the MoRF curve minus the LeRF curve over ``fractions``; ``info["morf_auc"]``,
    ``info["lerf_auc"]`` and ``info["full_z"]`` hold the two areas and the latent on the full image. A row
    whose latent is zero on the full image scores NaN. With ``resolution="adaptive"``, ``info["points"]`` and
    ``info["auc_error_bound"]`` are the sums over the two curves (the score's error is at most the latter,
    under the insertion metric's assumption of curves monotone between evaluated points).
    """

    higher_is_better = True
    ranking_based = True

    def __init__(self, **params: Any) -> None:
        self.insertion = Insertion(**params)
        self.score_range = (-1.0, 1.0) if self.insertion.clip else None

    def check_compatible(self, backbone: Backbone, saes: Sequence[Any] = ()) -> list[str]:
        """The problems of the insertion metric it is built on."""
        return self.insertion.check_compatible(backbone, saes)

    def evaluate(
        self,
        target: TargetFunction,
        x: torch.Tensor,
        heatmap: torch.Tensor,
        context: RunContext,
        annotations: Sequence[dict[str, Any]] | None = None,
    ) -> MetricResult:
        """Score ``heatmap [B, gh, gw]``: both insertion curves share the batches of one call."""
        b = len(x)
        both = self.insertion.evaluate(
            target.tile(2), torch.cat([x, x]), torch.cat([heatmap, -heatmap]), context
        )
        morf, lerf = both.score[:b], both.score[b:]
        info = {"morf_auc": morf, "lerf_auc": lerf, "full_z": both.info["full_z"][:b]}
        for name in ("points", "auc_error_bound"):  # adaptive resolution: the two curves' sums
            if name in both.info:
                info[name] = both.info[name][:b] + both.info[name][b:]
        return MetricResult(
            score=morf - lerf,
            curve=both.curve[:b] - both.curve[b:],
            fractions=both.fractions,
            info=info,
        )
