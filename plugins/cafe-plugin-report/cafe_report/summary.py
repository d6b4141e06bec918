"""The report's summary: per metric, layer and attributor, mean and median with bootstrap intervals, and the
paired difference of every attributor against a reference (the activation map by default)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from cafe_core.records import ScoreRecord, TargetKey, TargetRecord

from .stats import DEFAULT_LEVEL, DEFAULT_RESAMPLES, Estimate, bootstrap, paired_difference

__all__ = ["Summary", "SummaryRow", "as_records", "group_of", "summarise"]


def group_of(record: TargetRecord) -> str:
    """The group a target is summarised in: its SAE (label) and layer, and the prefix token it is read at if any.

    ``"toy_sae · layer 3"``, ``"toy_sae · layer 3 · cls"``.
    """
    group = f"{record.key.sae} · layer {record.key.layer}"
    name = record.position_name
    return group if name.startswith("patch") else f"{group} · {name}"


@dataclass(frozen=True)
class SummaryRow:
    """One metric, group and attributor."""

    metric: str
    group: str
    attributor: str
    mean: Estimate
    median: Estimate
    undefined: int
    difference: Estimate | None = None
    """Mean of (this attributor - reference) over the targets both scored; None for the reference itself."""
    wins: float | None = None
    """Share of those targets where this attributor does better than the reference."""


@dataclass
class Summary:
    """Every summary row, the metrics' directions and how the intervals were made."""

    rows: list[SummaryRow]
    higher_is_better: dict[str, bool | None]
    reference: str | None
    seed: int
    resamples: int = DEFAULT_RESAMPLES
    level: float = DEFAULT_LEVEL
    metrics: list[str] = field(default_factory=list)

    def of_metric(self, metric: str) -> list[SummaryRow]:
        """The rows of one metric."""
        return [row for row in self.rows if row.metric == metric]


def _better(a: float, b: float, higher: bool | None) -> bool:
    return a > b if higher is not False else a < b


def summarise(
    targets: Iterable[TargetRecord],
    scores: Iterable[ScoreRecord],
    higher_is_better: dict[str, bool | None],
    *,
    reference: str | None = "activation_map",
    seed: int = 0,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
) -> Summary:
    """Summarise the scores of a run over its explained targets.

    Parameters
    ----------
    targets, scores : iterable
        The run store's records.
    higher_is_better : dict
        Each metric's direction (``None``: descriptive).
    reference : str, optional
        The attributor every other one is compared with, target by target; no comparison when absent.
    seed : int
        Seed of every bootstrap (each estimate draws from ``seed``, so the same run gives the same report).
    resamples, level
        See :func:`cafe_report.stats.bootstrap`.
    """
    groups = {t.key: group_of(t) for t in targets if t.explained}
    values: dict[tuple[str, str, str], dict[TargetKey, float]] = {}
    for score in scores:
        if score.key in groups:
            values.setdefault((score.metric, groups[score.key], score.attributor), {})[score.key] = score.score
    options = {"resamples": resamples, "level": level, "seed": seed}
    rows = []
    metrics = sorted({metric for metric, _, _ in values})
    for metric, group, attributor in sorted(values):
        sample = values[(metric, group, attributor)]
        finite = [v for v in sample.values() if math.isfinite(v)]
        difference = wins = None
        base = values.get((metric, group, reference)) if reference else None
        if base is not None and attributor != reference:
            difference = paired_difference(sample, base, np.mean, **options)
            paired = [k for k in sample if k in base and math.isfinite(sample[k]) and math.isfinite(base[k])]
            if paired and higher_is_better.get(metric) is not None:
                wins = sum(_better(sample[k], base[k], higher_is_better[metric]) for k in paired) / len(paired)
        rows.append(
            SummaryRow(
                metric=metric,
                group=group,
                attributor=attributor,
                mean=bootstrap(finite, np.mean, **options),
                median=bootstrap(finite, np.median, **options),
                undefined=len(sample) - len(finite),
                difference=difference,
                wins=wins,
            )
        )
    present_reference = reference if any(r.attributor == reference for r in rows) else None
    return Summary(rows, dict(higher_is_better), present_reference, seed, resamples, level, metrics)


def as_records(summary: Summary) -> list[dict[str, Any]]:
    """The summary as plain rows (for ``summary.json`` beside the report)."""
    out = []
    for row in summary.rows:
        record = {"metric": row.metric, "group": row.group, "attributor": row.attributor,
                  "undefined": row.undefined, "wins_vs_reference": row.wins}
        for name in ("mean", "median", "difference"):
            estimate = getattr(row, name)
            if estimate is not None:
                record[name] = {"n": estimate.n, "value": _plain(estimate.value),
                                "low": _plain(estimate.low), "high": _plain(estimate.high)}
        out.append(record)
    return out


def _plain(value: float) -> float | None:
    return value if math.isfinite(value) else None
