"""The shared shape of the metrics read off a heatmap and its target token alone, with no forward pass."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from cafe_core.protocols import MetricResult, RunContext, TargetFunction

__all__ = ["HeatmapMetric"]


class HeatmapMetric:
    """Base of the descriptive metrics that need only the heatmap and the target's positions.

    Subclasses implement :meth:`score`; the image, the run context and the annotations are not used.
    """

    higher_is_better: bool | None = None

    def evaluate(
        self,
        target: TargetFunction,
        x: torch.Tensor,
        heatmap: torch.Tensor,
        context: RunContext,
        annotations: Sequence[dict[str, Any]] | None = None,
    ) -> MetricResult:
        """Score ``heatmap [B, gh, gw]`` (detached, on the CPU) against the target of each row."""
        return self.score(target, heatmap.detach().cpu())

    def score(self, target: TargetFunction, heatmap: torch.Tensor) -> MetricResult:
        """Score each row of ``heatmap [B, gh, gw]`` against ``target``'s layer and positions."""
        raise NotImplementedError
