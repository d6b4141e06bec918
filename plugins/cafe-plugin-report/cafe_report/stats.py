"""Interval estimates for the report: seeded bootstrap intervals over targets, and the Wilson interval of a share."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

__all__ = ["Estimate", "bootstrap", "bootstrap_record", "estimate_record", "paired_difference", "wilson_interval"]

DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A statistic of a sample with its bootstrap interval.

    Attributes
    ----------
    n : int
        Finite values the statistic was computed from.
    value : float
        The statistic (NaN when ``n`` is 0).
    low, high : float
        The percentile bootstrap interval (NaN when ``n`` is 0; the value itself when ``n`` is 1).
    """

    n: int
    value: float
    low: float
    high: float

    def format(self, digits: int = 3) -> str:
        """``"0.853 [0.781, 0.912]"``, or ``"–"`` for an empty sample."""
        if not self.n:
            return "–"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def bootstrap(
    values: np.ndarray | list[float],
    statistic: Callable[..., np.ndarray] = np.mean,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> Estimate:
    """The percentile bootstrap interval of ``statistic`` over the finite ``values``.

    Parameters
    ----------
    values : array-like
        One value per target; NaN and infinite values are dropped.
    statistic : callable
        ``statistic(array, axis=1)`` reduces each resample (``np.mean``, ``np.median``).
    resamples : int
        Number of bootstrap resamples (each draws ``n`` values with replacement).
    level : float
        Coverage of the interval: its bounds are the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles
        of the resampled statistics.
    seed : int
        Seed of the resampling (``numpy.random.default_rng``), so a report is reproducible.
    """
    sample = np.asarray(values, dtype=np.float64)
    sample = sample[np.isfinite(sample)]
    n = len(sample)
    if n == 0:
        return Estimate(0, math.nan, math.nan, math.nan)
    value = float(statistic(sample[None, :], axis=1)[0])
    rng = np.random.default_rng(seed)
    drawn = sample[rng.integers(0, n, size=(resamples, n))]
    stats = statistic(drawn, axis=1)
    low, high = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(n, value, float(low), float(high))


def paired_difference(
    a: dict, b: dict, statistic: Callable[..., np.ndarray] = np.mean, **options
) -> Estimate:
    """The bootstrap estimate of ``statistic`` of ``a[k] - b[k]`` over the keys both hold finite values for.

    Parameters
    ----------
    a, b : dict
        Values keyed by target.
    **options
        ``resamples``, ``level`` and ``seed`` of :func:`bootstrap`.
    """
    keys = [k for k in a if k in b and math.isfinite(a[k]) and math.isfinite(b[k])]
    return bootstrap([a[k] - b[k] for k in keys], statistic, **options)


def wilson_interval(successes: int, n: int, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """The Wilson score interval of a binomial share ``successes / n``.

    Returns
    -------
    tuple of float
        ``(low, high)`` within ``[0, 1]``; ``(nan, nan)`` when ``n`` is 0.
    """
    if n == 0:
        return math.nan, math.nan
    z = statistics.NormalDist().inv_cdf((1 + level) / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def estimate_record(estimate: Estimate) -> dict[str, Any]:
    """An estimate as plain data."""
    return {"n": estimate.n, "value": estimate.value, "low": estimate.low, "high": estimate.high}


def bootstrap_record(values: list[float], seed: int, statistic=np.mean) -> dict[str, Any]:
    """The bootstrap estimate of ``values`` as plain data."""
    return estimate_record(bootstrap(values, statistic, seed=seed))
