"""What a metric may return, checked before anything of it is stored.

The rule: a metric returns a :class:`~cafe_core.protocols.MetricResult` with one score per heatmap it was
given. A NaN score means *undefined* for that target (a locality metric on a class-token target has no patch
of its own): it is stored, read back as NaN and counted as ``undefined`` by the summary. Plus or minus
infinity is never a score; it is an error of the metric, as is a result of the wrong type or length.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .errors import CafeError
from .protocols import MetricResult
from .records import TargetKey

__all__ = ["MetricOutputError", "check_metric_result"]


class MetricOutputError(CafeError):
    """A metric returned something that is not a score per heatmap, or an infinite score."""


def check_metric_result(metric: str, result: Any, keys: Sequence[TargetKey], attributors: Sequence[str]) -> None:
    """Raise :class:`MetricOutputError` unless ``result`` holds one finite-or-NaN score per ``keys`` row.

    Parameters
    ----------
    metric : str
        The metric's label in the spec.
    result : object
        What the metric's ``evaluate`` returned.
    keys, attributors : sequence
        The target and attributor of each heatmap the metric was given.
    """
    fix = "this is a bug of the metric's plugin; report it to its authors, or leave the metric out of the spec"
    if not isinstance(result, MetricResult):
        raise MetricOutputError(
            f"metric {metric!r} returned a {type(result).__name__}, not a MetricResult, for {keys[0]} and "
            f"{len(keys) - 1} more target(s); {fix}"
        )
    score = torch.as_tensor(result.score)
    if tuple(score.shape) != (len(keys),):
        raise MetricOutputError(
            f"metric {metric!r} returned scores of shape {tuple(score.shape)} for {len(keys)} heatmaps "
            f"(expected ({len(keys)},)), first target {keys[0]}; {fix}"
        )
    infinite = torch.isinf(score.detach().double().cpu()).nonzero().flatten().tolist()
    if infinite:
        i = infinite[0]
        raise MetricOutputError(
            f"metric {metric!r} returned an infinite score ({float(score[i])}) for target {keys[i]} explained "
            f"by {attributors[i]!r} ({len(infinite)} infinite in all); a score is finite, or NaN where it is "
            f"undefined; {fix}"
        )
