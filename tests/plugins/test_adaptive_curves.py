"""Adaptive resolution of the insertion and deletion curves, against curves known in closed form."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest
import torch

from cafe_core.plugins import PluginHost
from cafe_core.protocols import RunContext, TargetFunction
from cafe_core.testing import check_metric
from cafe_faithfulness.curves import Deletion, Insertion
from cafe_faithfulness.params import PatchCurveParams
from cafe_faithfulness.relevance_gain import SymmetricRelevanceGain
from handbuilt import CountingBackbone, LinearReluSAE, TinyTimmViT, numpy_patch_sums, patch_sum_backbone

N = 16
CLS = 0
FRACTIONS = np.arange(N + 1) / N
METRICS = pytest.mark.parametrize("metric_class", [Insertion, Deletion], ids=["insertion", "deletion"])


def _trapezoid(y: np.ndarray) -> float:
    return float(((y[1:] + y[:-1]) / 2 * np.diff(FRACTIONS)).sum())


def _setup(w: np.ndarray, x: torch.Tensor, counting: bool = False):
    """A class-token target whose latent is ``relu(sum_i w_i s_i)`` (``s_i`` patch ``i``'s pixel sum)."""
    backbone = patch_sum_backbone()
    backbone = CountingBackbone(backbone) if counting else backbone
    target = TargetFunction(backbone, LinearReluSAE(torch.tensor(w[None], dtype=torch.float32)), 0, [0], [CLS])
    return target, w * numpy_patch_sums(x.double().numpy(), (2, 2))[0]


def _monotone_curve(contributions: np.ndarray, inserting: bool) -> np.ndarray:
    """Normalised curve of the exact ranking for non-negative contributions (monotone by construction)."""
    kept = np.concatenate([[0.0], np.cumsum(np.sort(contributions)[::-1])]) / contributions.sum()
    return kept if inserting else 1 - kept


def _heatmap(values: np.ndarray) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(1, 4, 4)


@METRICS
def test_a_curve_linear_in_the_patch_count_keeps_its_exact_area_with_fewer_points(metric_class):
    # Every patch contributes the same: the normalised curve is k / 16 (or 1 - k / 16), area exactly 1/2.
    x = torch.ones(1, 3, 8, 8)
    target, c = _setup(np.ones(N), x, counting=True)
    heatmap = _heatmap(np.arange(N, 0, -1))
    result = metric_class(resolution="adaptive", tolerance=0.1).evaluate(target, x, heatmap, RunContext())
    adaptive_forwards = sum(target.backbone.calls)

    assert abs(float(result.score[0]) - 0.5) <= 1e-6
    # Monotone bound: a row of intervals of width W sums to (W - 1/16) / 2 over a total variation of 1, so
    # a bound <= 0.1 needs W <= 0.2625: the 8-point stride bisected once, points 0, 4, 8, 12 and 16.
    assert float(result.info["points"][0]) == 5
    np.testing.assert_allclose(float(result.info["auc_error_bound"][0]), (4 / 16 - 1 / 16) / 2, rtol=1e-6)
    expected = FRACTIONS if metric_class.inserting else 1 - FRACTIONS
    np.testing.assert_allclose(result.curve[0].numpy(), expected, atol=1e-6)

    target.backbone.calls.clear()
    metric_class().evaluate(target, x, heatmap, RunContext())
    assert adaptive_forwards == 5 < sum(target.backbone.calls) == N + 1


@pytest.mark.parametrize("tolerance", [0.0, 0.005, 0.02, 0.05, 0.2])
@METRICS
def test_a_monotone_curve_is_within_the_tolerance_and_the_reported_bound(metric_class, tolerance):
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    w = np.random.default_rng(2).uniform(0.1, 1.0, size=N)
    target, c = _setup(w, x)
    exact_area = _trapezoid(_monotone_curve(c, metric_class.inserting))

    result = metric_class(resolution="adaptive", tolerance=tolerance).evaluate(target, x, _heatmap(c), RunContext())
    error = abs(float(result.score[0]) - exact_area)
    bound = float(result.info["auc_error_bound"][0])
    assert bound <= tolerance + 1e-9
    assert error <= bound + 1e-6
    assert (float(result.info["points"][0]) < N + 1) == (tolerance > 0)


@METRICS
def test_refinement_finds_a_step_at_one_patch(metric_class):
    # Only patch 5 counts and it is ranked sixth: the curve jumps between 5 and 6 patches changed.
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(3)) + 0.1
    w = np.zeros(N)
    w[5] = 1.0
    target, _ = _setup(w, x)
    heatmap = _heatmap(np.arange(N, 0, -1))
    step = (np.arange(N + 1) >= 6).astype(float)
    step = step if metric_class.inserting else 1 - step

    result = metric_class(resolution="adaptive", tolerance=0.01).evaluate(target, x, heatmap, RunContext())
    np.testing.assert_allclose(result.curve[0].numpy(), step, atol=1e-6)
    np.testing.assert_allclose(float(result.score[0]), _trapezoid(step), atol=1e-6)
    # 0, 8, 16 first; then 4 (the only interval that moves), 6 and 5: the step sits between adjacent points.
    assert float(result.info["points"][0]) == 6
    assert float(result.info["auc_error_bound"][0]) == 0

    coarse = metric_class(resolution="adaptive", tolerance=0.5).evaluate(target, x, heatmap, RunContext())
    assert float(coarse.info["points"][0]) == 3
    coarse_error = abs(float(coarse.score[0]) - _trapezoid(step))
    assert 0.05 < coarse_error <= float(coarse.info["auc_error_bound"][0])


@METRICS
def test_tolerance_zero_on_a_strictly_monotone_curve_is_the_full_resolution_curve(metric_class):
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    target, c = _setup(np.random.default_rng(5).uniform(0.1, 1.0, size=N), x)
    full = metric_class().evaluate(target, x, _heatmap(c), RunContext())
    zero = metric_class(resolution="adaptive", tolerance=0.0).evaluate(target, x, _heatmap(c), RunContext())

    assert float(zero.info["points"][0]) == N + 1 and float(zero.info["auc_error_bound"][0]) == 0
    # The same composites, forwarded in batches of other sizes: equal up to float32 rounding.
    torch.testing.assert_close(zero.curve, full.curve, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(zero.score, full.score, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(full.curve[0].numpy(), _monotone_curve(c, metric_class.inserting), atol=1e-6)


@METRICS
def test_tolerance_zero_on_a_vit_evaluates_every_point_of_an_unclipped_curve(metric_class):
    # Unclipped curves of a random ViT have no two equal consecutive values, so no interval is left unrefined.
    backbone = TinyTimmViT(seed=3)
    g = torch.Generator().manual_seed(11)
    sae = LinearReluSAE(torch.randn(4, 32, generator=g) / 32**0.5, torch.full((4,), 0.5), layer=1)
    target = TargetFunction(backbone, sae, 1, [0, 2, 3], [0, 1 + 4, 0])
    x, heatmap = torch.randn(3, 3, 32, 32, generator=g), torch.randn(3, 4, 4, generator=g)
    full = metric_class(clip=False).evaluate(target, x, heatmap, RunContext(batch_size=8))
    zero = metric_class(clip=False, resolution="adaptive", tolerance=0.0).evaluate(
        target, x, heatmap, RunContext(batch_size=8)
    )
    assert zero.info["points"].tolist() == [N + 1] * 3
    torch.testing.assert_close(zero.raw_curve, full.raw_curve, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(zero.score, full.score, rtol=1e-5, atol=1e-6)


@METRICS
def test_the_default_resolution_is_full_and_adds_nothing(metric_class):
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    target, c = _setup(np.random.default_rng(7).uniform(0.1, 1.0, size=N), x)
    built = PluginHost().registry("metric").get(metric_class.name).build({})
    assert (built.resolution, PatchCurveParams().resolution) == ("full", "full")

    default = built.evaluate(target, x, _heatmap(c), RunContext())
    assert set(default.info) == {"full_z", "raw_auc"}
    np.testing.assert_allclose(default.fractions.numpy(), FRACTIONS)
    np.testing.assert_allclose(default.curve[0].numpy(), _monotone_curve(c, metric_class.inserting), atol=1e-6)
    # A first grid of every point evaluates the same composites in one round: the same numbers exactly.
    every = metric_class(resolution="adaptive", initial_stride=1).evaluate(target, x, _heatmap(c), RunContext())
    for name in ("score", "curve", "raw_curve", "fractions"):
        torch.testing.assert_close(getattr(every, name), getattr(default, name), rtol=0, atol=0)


def test_symmetric_relevance_gain_sums_the_two_curves_points_and_bounds():
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(8))
    target, c = _setup(np.random.default_rng(9).uniform(0.1, 1.0, size=N), x)
    morf_area = _trapezoid(_monotone_curve(c, True))
    lerf_area = _trapezoid(np.concatenate([[0.0], np.cumsum(np.sort(c))]) / c.sum())

    result = SymmetricRelevanceGain(resolution="adaptive", tolerance=0.02).evaluate(
        target, x, _heatmap(c), RunContext()
    )
    bound = float(result.info["auc_error_bound"][0])
    assert bound <= 2 * 0.02 + 1e-9
    assert abs(float(result.score[0]) - (morf_area - lerf_area)) <= bound + 1e-6
    assert 6 <= float(result.info["points"][0]) < 2 * (N + 1)


def test_adaptive_metrics_pass_the_conformance_kit():
    backbone = TinyTimmViT(seed=2)
    g = torch.Generator().manual_seed(10)
    sae = LinearReluSAE(torch.randn(4, 32, generator=g) / 32**0.5, torch.full((4,), 0.5), layer=0)
    target = TargetFunction(backbone, sae, 0, [0, 1, 3], [0, 1 + 2, 0])
    x = torch.randn(3, 3, 32, 32, generator=g)
    for metric in (Insertion(resolution="adaptive", tolerance=0.05), Deletion(resolution="adaptive", initial_stride=4)):
        result = check_metric(metric, target, x, torch.randn(3, 4, 4, generator=g), RunContext(batch_size=4))
        assert (result.info["points"] < N + 1).any()


@pytest.mark.filterwarnings("ignore:cafe plugin:RuntimeWarning")
def test_the_params_model_checks_the_adaptive_settings():
    params = PatchCurveParams(resolution="adaptive", tolerance=0.02, initial_stride=4)
    assert (params.tolerance, params.initial_stride) == (0.02, 4)
    for bad in ({"resolution": "coarse"}, {"resolution": "adaptive", "tolerance": -0.1},
                {"resolution": "adaptive", "initial_stride": 0}, {"resolution": "adaptive", "tolerance": float("nan")}):
        with pytest.raises(pydantic.ValidationError):
            PatchCurveParams(**bad)
    with pytest.raises(pydantic.ValidationError, match='tolerance only apply with resolution = "adaptive"'):
        PatchCurveParams(tolerance=0.02)
    built = PluginHost().registry("metric").get("deletion").build({"resolution": "adaptive", "tolerance": 0.03})
    assert (built.resolution, built.tolerance, built.initial_stride) == ("adaptive", 0.03, 8)
