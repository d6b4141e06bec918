"""How local an explanation is: the share of positive relevance on the fired token's own patch."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from cafe_core.protocols import MetricResult, RunContext, TargetFunction, own_patch

__all__ = ["OwnPatchShare"]


class OwnPatchShare:
    """Positive relevance on the target token's own patch over all positive relevance.

    A latent whose own patch holds less than half of the positive relevance is *non-local*: what made it
    fire lies elsewhere in the image. The score is NaN for prefix-token targets (a class token or register has
    no patch of its own) and for heatmaps without positive relevance.
    """

    higher_is_better = None  # descriptive: how local an explanation is, not how good
    score_range = (0.0, 1.0)

    def evaluate(
        self,
        target: TargetFunction,
        x: torch.Tensor,
        heatmap: torch.Tensor,
        context: RunContext,
        annotations: Sequence[dict[str, Any]] | None = None,
    ) -> MetricResult:
        """Score each row's heatmap against the position of its target token (``annotations`` are not used)."""
        positive = heatmap.clamp_min(0).flatten(1)
        patch = own_patch(target.backbone, target.layer, target.positions).to(heatmap.device)
        is_patch = patch >= 0
        own = positive.gather(1, patch.clamp_min(0)[:, None]).squeeze(1)
        total = positive.sum(1)
        share = own / torch.where(total > 0, total, torch.ones_like(total))
        undefined = ~is_patch | (total <= 0)
        return MetricResult(
            score=torch.where(undefined, torch.full_like(share, float("nan")), share),
            info={"positive_total": total},
        )
