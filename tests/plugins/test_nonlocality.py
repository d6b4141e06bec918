"""Cause patches, the non-locality measures and the symmetric relevance gain, against cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pydantic
import pytest
import torch

from cafe_core.plugins import PluginHost
from cafe_core.protocols import Metric, RunContext, TargetFunction
from cafe_core.testing import check_metric
from cafe_faithfulness.cause import CausePatches, cause_counts, cause_masks, relevance_concentration
from cafe_faithfulness.locality_params import CausePatchesParams, NonlocalMassParams
from cafe_faithfulness.nonlocality import (
    ActivationAgreement,
    NonlocalMass,
    RelevanceDistance,
    centre_of_mass,
    mass_outside,
    spearman,
)
from cafe_faithfulness.relevance_gain import SymmetricRelevanceGain
from handbuilt import LinearReluSAE, TinyTimmViT, numpy_patch_sums, patch_sum_backbone

CONTEXT = RunContext(batch_size=4)

# 2x3 heatmap: positive total 10; descending order 4 (0,0), 3 (0,2), 2 (1,1), 1 (1,2), 0 (1,0), -1 (0,1)
SMALL = torch.tensor([[[4.0, -1.0, 3.0], [0.0, 2.0, 1.0]]])

# 4x4 heatmap with positive relevance 2 at (0,0), 1 at (1,1), 3 at (3,3), 4 at (0,3), and -5 at (2,0)
SPREAD = torch.zeros(1, 4, 4)
SPREAD[0, 0, 0], SPREAD[0, 1, 1], SPREAD[0, 3, 3], SPREAD[0, 0, 3], SPREAD[0, 2, 0] = 2.0, 1.0, 3.0, 4.0, -5.0


def _patch_target(positions, latents=None):
    """A target on the 4x4-patch hand-built backbone (position 0 is the class token, 1 + r * 4 + c a patch)."""
    backbone = patch_sum_backbone()
    sae = LinearReluSAE(torch.ones(2, 16), layer=0)
    latents = latents if latents is not None else [0] * len(positions)
    return TargetFunction(backbone, sae, 0, latents, positions)


# --- cause patches ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("share, count", [(0.5, 2), (0.7, 2), (0.75, 3), (0.9, 3), (1.0, 4), (0.3, 1)])
def test_cause_set_is_the_fewest_top_patches_holding_the_share(share, count):
    # cumulative positive share down the ranking: 0.4, 0.7, 0.9, 1.0, 1.0, 1.0
    assert cause_counts(SMALL, share).tolist() == [count]
    order = [(0, 0), (0, 2), (1, 1), (1, 2), (1, 0), (0, 1)]
    expected = np.zeros((2, 3), dtype=bool)
    for r, c in order[:count]:
        expected[r, c] = True
    np.testing.assert_array_equal(cause_masks(SMALL, share)[0].numpy(), expected)


def test_cause_metric_reports_size_share_held_and_the_concentration_curve():
    target = TargetFunction(patch_sum_backbone((4, 6), (2, 2)), LinearReluSAE(torch.ones(1, 6)), 0, [0], [1])
    result = CausePatches(share=0.5).evaluate(target, torch.zeros(1, 3, 4, 6), SMALL, CONTEXT)
    assert result.score.tolist() == pytest.approx([2 / 6])
    assert result.info["count"].tolist() == [2.0]
    assert result.info["share_held"].tolist() == pytest.approx([0.7])
    assert result.info["positive_total"].tolist() == pytest.approx([10.0])
    np.testing.assert_allclose(result.curve[0].numpy(), [0, 0.4, 0.7, 0.9, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(result.fractions.numpy(), np.arange(7) / 6)


def test_top_k_takes_the_k_first_patches_and_ties_keep_row_major_order():
    assert cause_counts(SMALL, top_k=5).tolist() == [5]
    mask = cause_masks(SMALL, top_k=5)[0].numpy()
    assert not mask[0, 1] and mask.sum() == 5  # only the negative patch is left out
    flat = torch.ones(1, 2, 2)
    np.testing.assert_array_equal(cause_masks(flat, 0.5)[0].numpy(), [[True, True], [False, False]])


def test_no_positive_relevance_means_no_cause_set():
    negative = -torch.rand(2, 2, 3) - 0.1
    assert cause_counts(negative, 0.5).tolist() == [0, 0]
    assert not cause_masks(negative, 0.5).any()
    assert torch.isnan(relevance_concentration(negative)).all()
    target = TargetFunction(patch_sum_backbone((4, 6), (2, 2)), LinearReluSAE(torch.ones(1, 6)), 0, [0, 0], [1, 2])
    result = CausePatches().evaluate(target, torch.zeros(2, 3, 4, 6), negative, CONTEXT)
    assert torch.isnan(result.score).all()


# --- mass outside the neighbourhood and centre of mass ------------------------------------------------------------


@pytest.mark.parametrize("radius, outside", [(0, 0.8), (1, 0.7), (2, 0.7), (3, 0.0)])
def test_mass_outside_the_fired_patch_neighbourhood(radius, outside):
    # fired at (0, 0); the 3x3 neighbourhood (radius 1) holds 2 + 1 of the 10 positive; radius 2 adds no mass
    # ((0,3) and (3,3) are 3 away), radius 3 covers the grid
    share = mass_outside(SPREAD, torch.tensor([0]), torch.tensor([0]), radius)
    assert share.tolist() == pytest.approx([outside])
    metric = NonlocalMass(radius=radius)
    assert metric.evaluate(_patch_target([1]), torch.zeros(1, 3, 8, 8), SPREAD, CONTEXT).score.tolist() == (
        pytest.approx([outside])
    )


def test_centre_of_mass_and_distance_from_the_fired_patch():
    # rows: (0*2 + 1*1 + 3*3 + 0*4) / 10 = 1.0; columns: (0*2 + 1*1 + 3*3 + 3*4) / 10 = 2.2
    row, col = centre_of_mass(SPREAD)
    assert (row.item(), col.item()) == pytest.approx((1.0, 2.2))
    # fired at (2, 1) (position 1 + 2 * 4 + 1): distance sqrt(1^2 + 1.2^2)
    result = RelevanceDistance().evaluate(_patch_target([10]), torch.zeros(1, 3, 8, 8), SPREAD, CONTEXT)
    assert result.score.item() == pytest.approx(math.sqrt(1 + 1.2**2))
    assert (result.info["com_row"].item(), result.info["com_col"].item()) == pytest.approx((1.0, 2.2))


def test_relevance_on_the_fired_patch_alone_is_local():
    heatmap = torch.zeros(1, 4, 4)
    heatmap[0, 2, 3] = 5.0
    target = _patch_target([1 + 2 * 4 + 3])
    x = torch.zeros(1, 3, 8, 8)
    assert NonlocalMass(radius=0).evaluate(target, x, heatmap, CONTEXT).score.item() == 0.0
    assert RelevanceDistance().evaluate(target, x, heatmap, CONTEXT).score.item() == 0.0


def test_class_token_targets_have_no_fired_patch():
    x = torch.zeros(2, 3, 8, 8)
    heatmap = SPREAD.expand(2, -1, -1)
    target = _patch_target([0, 1])
    mass = NonlocalMass().evaluate(target, x, heatmap, CONTEXT)
    distance = RelevanceDistance().evaluate(target, x, heatmap, CONTEXT)
    assert math.isnan(mass.score[0]) and mass.score[1].item() == pytest.approx(0.7)
    assert math.isnan(distance.score[0])
    assert distance.info["com_row"][0].item() == pytest.approx(1.0)  # the iERF still has a centre


# --- rank correlation with the activation map ------------------------------------------------------------------------


def test_spearman_with_ties_matches_the_hand_computation():
    # ranks of b = [5, 6, 7, 8, 7]: [1, 2, 3.5, 5, 3.5]; centred ranks: [-2,-1,0,1,2] and [-2,-1,.5,2,.5]
    # r = 8 / sqrt(10 * 9.5)
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    b = torch.tensor([[5.0, 6.0, 7.0, 8.0, 7.0]])
    assert spearman(a, b).item() == pytest.approx(8 / math.sqrt(95))
    assert spearman(a, -a).item() == pytest.approx(-1.0)
    assert math.isnan(spearman(a, torch.ones(1, 5)).item())


def test_activation_agreement_reads_the_latent_at_every_patch_token():
    # on the hand-built model the activation map of latent w is relu(w_j * s_j) at patch j
    g = torch.Generator().manual_seed(3)
    w = torch.rand(1, 16, generator=g) + 0.1
    x = torch.rand(1, 3, 8, 8, generator=g) + 0.05
    activation = torch.as_tensor(w.numpy() * numpy_patch_sums(x.double().numpy(), (2, 2)), dtype=torch.float32)
    target = TargetFunction(patch_sum_backbone(), LinearReluSAE(w), 0, [0], [0])
    metric = ActivationAgreement()
    same_order = activation.reshape(1, 4, 4) ** 3
    assert metric.evaluate(target, x, same_order, CONTEXT).score.item() == pytest.approx(1.0)
    assert metric.evaluate(target, x, -activation.reshape(1, 4, 4), CONTEXT).score.item() == pytest.approx(-1.0)


# --- symmetric relevance gain ------------------------------------------------------------------------------------


def _trapezoid(y: np.ndarray) -> float:
    x = np.arange(len(y)) / (len(y) - 1)
    return float(((y[1:] + y[:-1]) / 2 * np.diff(x)).sum())


def test_relevance_gain_is_most_relevant_first_minus_least_relevant_first():
    # class-token latent relu(sum_i w_i s_i) with positive contributions c_i = w_i s_i and the zero blank:
    # inserting patches in order o gives relu(cumsum(c[o])) / sum(c)
    g = torch.Generator().manual_seed(5)
    w = torch.rand(1, 16, generator=g) + 0.1
    x = torch.rand(1, 3, 8, 8, generator=g)
    c = w.double().numpy()[0] * numpy_patch_sums(x.double().numpy(), (2, 2))[0]
    heatmap = torch.as_tensor(c, dtype=torch.float32).reshape(1, 4, 4)
    morf = np.concatenate([[0], np.cumsum(np.sort(c)[::-1])]) / c.sum()
    lerf = np.concatenate([[0], np.cumsum(np.sort(c))]) / c.sum()
    target = TargetFunction(patch_sum_backbone(), LinearReluSAE(w), 0, [0], [0])
    result = SymmetricRelevanceGain().evaluate(target, x, heatmap, RunContext(batch_size=5))
    assert result.score.item() == pytest.approx(_trapezoid(morf) - _trapezoid(lerf), rel=1e-5)
    assert result.info["morf_auc"].item() == pytest.approx(_trapezoid(morf), rel=1e-5)
    assert result.info["lerf_auc"].item() == pytest.approx(_trapezoid(lerf), rel=1e-5)
    np.testing.assert_allclose(result.curve[0].numpy(), morf - lerf, rtol=1e-5, atol=1e-6)
    reversed_ = SymmetricRelevanceGain().evaluate(target, x, -heatmap, RunContext(batch_size=5))
    assert reversed_.score.item() == pytest.approx(-result.score.item(), rel=1e-5)


# --- the conformance kit, discovery and params -----------------------------------------------------------------------


METRICS = [CausePatches(), CausePatches(share=0.8), CausePatches(top_k=3), NonlocalMass(), NonlocalMass(radius=0),
           RelevanceDistance(), ActivationAgreement(), SymmetricRelevanceGain(steps=3)]


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: type(m).__name__)
def test_conformance(metric):
    assert isinstance(metric, Metric)
    backbone = TinyTimmViT(seed=2)
    g = torch.Generator().manual_seed(10)
    sae = LinearReluSAE(torch.randn(4, 32, generator=g) / 32**0.5, torch.full((4,), 0.5), layer=0)
    target = TargetFunction(backbone, sae, 0, [0, 1, 3], [0, 1 + 2, 1 + 9])
    x = torch.randn(3, 3, 32, 32, generator=g)
    check_metric(metric, target, x, torch.randn(3, 4, 4, generator=g), RunContext(batch_size=4))


@pytest.mark.filterwarnings("ignore:cafe plugin:RuntimeWarning")
def test_metrics_are_discovered_through_entry_points():
    registry = PluginHost().registry("metric")
    cause = registry.get("cause_patches").build({"share": 0.8})
    assert isinstance(cause, CausePatches) and cause.share == 0.8
    assert isinstance(registry.get("nonlocal_mass").build({"radius": 2}), NonlocalMass)
    assert isinstance(registry.get("relevance_distance").build({}), RelevanceDistance)
    assert isinstance(registry.get("activation_agreement").build({}), ActivationAgreement)
    assert isinstance(registry.get("srg").build({"steps": 2}), SymmetricRelevanceGain)
    for name in ("cause_patches", "nonlocal_mass", "relevance_distance", "activation_agreement",
                 "symmetric_relevance_gain"):
        assert registry.get(name).plugin == "faithfulness"


@pytest.mark.parametrize("params", [{"share": 0.0}, {"share": 1.5}, {"top_k": 0}, {"shares": 0.5}], ids=str)
def test_cause_params_are_checked(params):
    with pytest.raises(pydantic.ValidationError):
        CausePatchesParams(**params)


def test_radius_must_be_non_negative():
    with pytest.raises(pydantic.ValidationError):
        NonlocalMassParams(radius=-1)
