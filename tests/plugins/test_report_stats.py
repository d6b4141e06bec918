"""The report's intervals and summary against published values, limit theorems and hand-made runs."""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
import pytest

from cafe_core.records import ScoreRecord, TargetKey, TargetRecord
from cafe_report.stats import bootstrap, paired_difference, wilson_interval
from cafe_report.summary import group_of, summarise


@pytest.mark.parametrize(
    "k, n, low, high",
    # published Wilson 95% intervals (e.g. Newcombe 1998, table I; Brown, Cai & DasGupta 2001)
    [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0), (81, 263, 0.2553, 0.3662)],
)
def test_wilson_interval_matches_published_values(k, n, low, high):
    got = wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=5e-4)


def test_wilson_interval_solves_its_quadratic():
    # the bounds are the roots p of (k/n - p)^2 = z^2 p (1 - p) / n, z the normal 97.5% quantile
    z = 1.959963984540054
    k, n = 16, 200
    a = 1 + z * z / n
    b = -(2 * k / n + z * z / n)
    c = (k / n) ** 2
    roots = sorted(((-b - math.sqrt(b * b - 4 * a * c)) / (2 * a), (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)))
    assert wilson_interval(k, n) == pytest.approx(tuple(roots), abs=1e-9)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_bootstrap_interval_of_the_mean_approaches_the_normal_interval():
    sample = np.random.default_rng(1).normal(3.0, 2.0, size=400)
    estimate = bootstrap(sample, np.mean, resamples=4000, seed=7)
    half = 1.959964 * sample.std(ddof=0) / math.sqrt(len(sample))
    assert estimate.n == 400 and estimate.value == pytest.approx(sample.mean())
    assert estimate.low == pytest.approx(sample.mean() - half, abs=0.03)
    assert estimate.high == pytest.approx(sample.mean() + half, abs=0.03)


def test_bootstrap_is_seeded_drops_non_finite_values_and_handles_small_samples():
    values = [0.2, 0.9, math.nan, 0.4, math.inf, 0.7]
    first, again = bootstrap(values, seed=3), bootstrap(values, seed=3)
    assert first == again and first.n == 4 and first.value == pytest.approx(0.55)
    assert first.low < first.value < first.high
    assert bootstrap([0.5, 0.5, 0.5], np.median).format() == "0.500 [0.500, 0.500]"
    empty = bootstrap([math.nan])
    assert empty.n == 0 and empty.format() == "–"


def test_paired_difference_uses_the_keys_both_samples_hold():
    a = {"t1": 0.9, "t2": 0.8, "t3": 0.7, "t4": math.nan, "t5": 0.5}
    b = {"t1": 0.6, "t2": 0.5, "t3": 0.4, "t4": 0.1}  # t5 unpaired, t4 undefined in a
    estimate = paired_difference(a, b)
    assert estimate.n == 3
    assert (estimate.value, estimate.low, estimate.high) == pytest.approx((0.3, 0.3, 0.3))


KEY_FIELDS = [f.name for f in fields(TargetKey)]
GROUP = "toy · layer 3" if "sae" in KEY_FIELDS else "layer 3"  # keys name their SAE where the store records it


def _key(image: str, latent: int, position: int) -> TargetKey:
    values = {"image_id": image, "sae": "toy", "layer": 3, "latent": latent, "position": position}
    return TargetKey(**{name: values[name] for name in KEY_FIELDS})


def _target(image: str, latent: int, position_name: str = "patch(0,0)") -> TargetRecord:
    return TargetRecord(_key(image, latent, 0 if position_name == "cls" else 1), position_name, 1.0, "explained")


def test_summary_rows_hold_means_medians_and_paired_differences_by_group():
    targets = [_target("a", 1), _target("b", 1), _target("c", 2), _target("a", 7, "cls"),
               TargetRecord(_key("d", 1, 1), "patch(0,0)", 0.0, "inactive")]
    insertion = {  # attributor -> scores of the targets a/1, b/1, c/2 (patch group) and a/7 (cls group)
        "activation_map": [0.2, 0.5, 0.4, 0.1],
        "attnlrp": [0.9, 0.4, 0.8, 0.6],
    }
    scores = [ScoreRecord(t.key, attributor, "insertion", values[i])
              for attributor, values in insertion.items() for i, t in enumerate(targets[:4])]
    scores.append(ScoreRecord(targets[4].key, "attnlrp", "insertion", 0.0))  # inactive: not summarised
    summary = summarise(targets, scores, {"insertion": True}, reference="activation_map", seed=0, resamples=200)
    rows = {(r.group, r.attributor): r for r in summary.rows}
    assert set(rows) == {(GROUP, "activation_map"), (GROUP, "attnlrp"),
                         (f"{GROUP} · cls", "activation_map"), (f"{GROUP} · cls", "attnlrp")}
    patch = rows[(GROUP, "attnlrp")]
    assert patch.mean.n == 3 and patch.mean.value == pytest.approx(0.7)
    assert patch.median.value == pytest.approx(0.8)
    # differences 0.7, -0.1, 0.4: mean 1/3; attnlrp better on 2 of 3
    assert patch.difference.value == pytest.approx(1 / 3) and patch.wins == pytest.approx(2 / 3)
    assert rows[(GROUP, "activation_map")].difference is None
    assert rows[(f"{GROUP} · cls", "attnlrp")].difference.value == pytest.approx(0.5)
    assert summary.reference == "activation_map" and summary.metrics == ["insertion"]


def test_lower_is_better_metrics_count_wins_downwards_and_a_missing_reference_is_reported():
    targets = [_target("a", 1), _target("b", 1)]
    scores = [ScoreRecord(targets[0].key, "x", "deletion", 0.1), ScoreRecord(targets[1].key, "x", "deletion", 0.5),
              ScoreRecord(targets[0].key, "ref", "deletion", 0.3), ScoreRecord(targets[1].key, "ref", "deletion", 0.2)]
    summary = summarise(targets, scores, {"deletion": False}, reference="ref", resamples=100)
    row = next(r for r in summary.rows if r.attributor == "x")
    assert row.wins == pytest.approx(0.5)
    assert summarise(targets, scores, {"deletion": False}, reference="absent").reference is None
    assert group_of(_target("a", 1, "reg0")) == f"{GROUP} · reg0"
