"""How local an explanation is: the share of positive relevance on the fired token's own patch."""

from __future__ import annotations

import torch

from cafe_core.protocols import MetricResult, TargetFunction, own_patch

from .heatmap_metric import HeatmapMetric

__all__ = ["OwnPatchShare"]


class OwnPatchShare(HeatmapMetric):
    """Positive relevance on the target token's own patch over all positive relevance.

    A latent whose own patch holds less than half of the positive relevance is *non-local*: what made it
    fire lies elsewhere in the image. The score is NaN for prefix-token targets (a class token or register has
    no patch of its own) and for heatmaps without positive relevance.
    """

    higher_is_better = None  # descriptive: how local an explanation is, not how good
    score_range = (0.0, 1.0)

    def score(self, target: TargetFunction, heatmap: torch.Tensor) -> MetricResult:
        """Share of each row's positive relevance on its target token's own patch."""
        positive = heatmap.clamp_min(0).flatten(1)
        patch = own_patch(target.backbone, target.layer, target.positions)
        is_patch = patch >= 0
        own = positive.gather(1, patch.clamp_min(0)[:, None]).squeeze(1)
        total = positive.sum(1)
        share = own / torch.where(total > 0, total, torch.ones_like(total))
        undefined = ~is_patch | (total <= 0)
        return MetricResult(
            score=torch.where(undefined, torch.full_like(share, float("nan")), share),
            info={"positive_total": total},
        )
