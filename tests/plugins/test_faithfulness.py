"""Insertion and deletion against curves derived by hand on a linear model, and on a tiny real ViT."""

from __future__ import annotations

import math

import numpy as np
import pydantic
import pytest
import torch

from cafe_core.errors import IncompatibleComponentError
from cafe_core.plugins import PluginHost
from cafe_core.protocols import Metric, RunContext, TargetFunction
from cafe_core.testing import check_metric
from cafe_core.blanks import gaussian_blur
from cafe_faithfulness.curves import Deletion, Insertion
from cafe_faithfulness.params import PatchCurveParams
from handbuilt import (
    CountingBackbone,
    LinearReluSAE,
    TinyTimmViT,
    numpy_gaussian_blur,
    numpy_patch_sums,
    patch_sum_backbone,
)

N = 16
CLS = 0


def _images(b: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(((y[1:] + y[:-1]) / 2 * np.diff(x)).sum())


def _linear_setup(w: np.ndarray, b: int = 1, seed: int = 0):
    """A class-token target whose latent is ``relu(sum_i w_i s_i)``, with its contributions ``w_i s_i``."""
    x = _images(b, seed)
    sae = LinearReluSAE(torch.tensor(np.atleast_2d(w), dtype=torch.float32))
    target = TargetFunction(patch_sum_backbone(), sae, 0, [0] * b, [CLS] * b)
    contributions = np.atleast_2d(w) * numpy_patch_sums(x.double().numpy(), (2, 2))
    return target, x, contributions


def _expected_curve(contributions: np.ndarray, order: np.ndarray, inserting: bool) -> np.ndarray:
    """The unnormalised curve of the zero blank, one point per patch: relu of the kept contributions."""
    kept = np.concatenate([[0.0], np.cumsum(contributions[order])])
    if not inserting:
        kept = contributions.sum() - kept
    return np.maximum(kept, 0)


def _heatmap(values: np.ndarray) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(-1, 4, 4)


W = np.random.default_rng(0).uniform(0.1, 1.0, size=N)


def test_metrics_satisfy_the_protocol():
    assert isinstance(Insertion(), Metric) and isinstance(Deletion(), Metric)
    assert Insertion.higher_is_better is True and Deletion.higher_is_better is False


@pytest.mark.parametrize("metric", [Insertion(), Deletion()], ids=["insertion", "deletion"])
def test_curve_of_the_exact_ranking_is_the_sorted_cumulative_contribution(metric):
    target, x, c = _linear_setup(W)
    result = metric.evaluate(target, x, _heatmap(c), RunContext(batch_size=5))

    curve = _expected_curve(c[0], np.argsort(-c[0]), metric.inserting) / c[0].sum()
    fractions = np.arange(N + 1) / N
    np.testing.assert_allclose(result.fractions.numpy(), fractions)
    np.testing.assert_allclose(result.curve[0].numpy(), curve, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.raw_curve[0].numpy(), curve, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.score.numpy(), [_trapezoid(curve, fractions)], rtol=1e-5)
    np.testing.assert_allclose(result.info["raw_auc"].numpy(), result.score.numpy(), rtol=1e-6)
    np.testing.assert_allclose(result.info["full_z"].numpy(), [c[0].sum()], rtol=1e-5)
    assert result.score.shape == (1,) and result.curve.shape == (1, N + 1)


@pytest.mark.parametrize("metric", [Insertion(), Deletion()], ids=["insertion", "deletion"])
def test_a_float64_model_gives_float64_curves_equal_to_the_hand_computed_ones(metric):
    # Weights exactly representable in float32, so that the float64 model computes the float64 curve.
    w = W.astype(np.float32).astype(np.float64)
    x = _images(1).double()
    sae = LinearReluSAE(torch.tensor(w[None], dtype=torch.float32))
    backbone = patch_sum_backbone()
    backbone.model.double()
    target = TargetFunction(backbone, sae, 0, [0], [CLS])
    c = w[None] * numpy_patch_sums(x.numpy(), (2, 2))
    result = metric.evaluate(target, x, _heatmap(c), RunContext(dtype=torch.float64))

    curve = _expected_curve(c[0], np.argsort(-c[0]), metric.inserting) / c[0].sum()
    for values in (result.curve, result.raw_curve, result.score, result.fractions, result.info["raw_auc"]):
        assert values.dtype == torch.float64
    np.testing.assert_allclose(result.raw_curve[0].numpy(), curve, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(result.score.numpy(), [_trapezoid(curve, np.arange(N + 1) / N)], rtol=1e-12)
    # The same model in float32 is only float32-close: the float64 run is not rounded through it.
    backbone.model.float()
    single = metric.evaluate(target, x.float(), _heatmap(c), RunContext())
    assert single.curve.dtype == torch.float32
    assert np.abs(single.raw_curve[0].double().numpy() - curve).max() > 1e-10


def test_reversed_ranking_scores_worse():
    target, x, c = _linear_setup(W)
    good, bad = _heatmap(c), _heatmap(-c)
    insertion, deletion = Insertion(), Deletion()
    context = RunContext()
    assert insertion.evaluate(target, x, bad, context).score < insertion.evaluate(target, x, good, context).score
    assert deletion.evaluate(target, x, bad, context).score > deletion.evaluate(target, x, good, context).score

    reversed_curve = _expected_curve(c[0], np.argsort(c[0]), True) / c[0].sum()
    np.testing.assert_allclose(
        insertion.evaluate(target, x, bad, context).curve[0].numpy(), reversed_curve, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("steps", [2, 3, 5, 16, 40])
@pytest.mark.parametrize("metric_class", [Insertion, Deletion], ids=["insertion", "deletion"])
def test_steps_subsample_the_same_curve(metric_class, steps):
    target, x, c = _linear_setup(W)
    full = metric_class().evaluate(target, x, _heatmap(c), RunContext())
    result = metric_class(steps=steps).evaluate(target, x, _heatmap(c), RunContext())

    counts = list(range(0, N, steps)) + [N]
    assert result.curve.shape == (1, math.ceil(N / steps) + 1)
    np.testing.assert_allclose(result.fractions.numpy(), np.array(counts) / N)
    np.testing.assert_allclose(result.curve[0].numpy(), full.curve[0, counts].numpy(), rtol=1e-6)
    np.testing.assert_allclose(
        result.score.numpy(), [_trapezoid(full.curve[0, counts].numpy(), np.array(counts) / N)], rtol=1e-5
    )


def test_clip_caps_a_partial_image_that_over_activates():
    w = W.copy()
    w[5] = -3.0  # a patch that suppresses the latent: inserted last, so earlier points exceed the full image
    target, x, c = _linear_setup(w)
    assert c[0].sum() > 0
    heatmap = _heatmap(c)

    raw = _expected_curve(c[0], np.argsort(-c[0]), True) / c[0].sum()
    assert raw.max() > 1.2
    fractions = np.arange(N + 1) / N
    clipped = Insertion(clip=True).evaluate(target, x, heatmap, RunContext())
    unclipped = Insertion(clip=False).evaluate(target, x, heatmap, RunContext())

    np.testing.assert_allclose(clipped.raw_curve[0].numpy(), raw, rtol=1e-5)
    np.testing.assert_allclose(clipped.curve[0].numpy(), np.clip(raw, 0, 1), rtol=1e-5)
    np.testing.assert_allclose(clipped.score.numpy(), [_trapezoid(np.clip(raw, 0, 1), fractions)], rtol=1e-5)
    np.testing.assert_allclose(clipped.info["raw_auc"].numpy(), [_trapezoid(raw, fractions)], rtol=1e-5)
    np.testing.assert_allclose(unclipped.curve[0].numpy(), raw, rtol=1e-5)
    np.testing.assert_allclose(unclipped.score.numpy(), clipped.info["raw_auc"].numpy(), rtol=1e-6)
    assert clipped.score < unclipped.score


def test_a_latent_that_is_off_on_the_full_image_scores_nan():
    target, x, c = _linear_setup(np.stack([W, W]), b=2)
    x = x.clone()
    x[1] = 0
    target = TargetFunction(target.backbone, target.sae, 0, [0, 1], [CLS, CLS])
    for metric in (Insertion(), Deletion()):
        result = metric.evaluate(target, x, _heatmap(c), RunContext())
        assert result.info["full_z"][1] == 0 and result.info["full_z"][0] > 0
        assert torch.isnan(result.score[1]) and torch.isnan(result.info["raw_auc"][1])
        assert torch.isnan(result.curve[1]).all()
        assert torch.isfinite(result.score[0])


@pytest.mark.parametrize("blank", ["zeros", "mean", "blur"])
@pytest.mark.parametrize("metric_class", [Insertion, Deletion], ids=["insertion", "deletion"])
def test_a_batch_of_different_latents_equals_rows_one_by_one(metric_class, blank):
    backbone = patch_sum_backbone()
    w = np.random.default_rng(1).uniform(-0.2, 1.0, size=(3, N))
    sae = LinearReluSAE(torch.tensor(w, dtype=torch.float32))
    x = _images(4, seed=2)
    latents, positions = [0, 1, 2, 1], [CLS, CLS, CLS, 1 + 6]
    heatmap = torch.randn(4, 4, 4, generator=torch.Generator().manual_seed(3))
    metric = metric_class(steps=3, blank=blank, blur_sigma=1.5)

    batch = metric.evaluate(TargetFunction(backbone, sae, 0, latents, positions), x, heatmap, RunContext(batch_size=5))
    for i in range(4):
        single = metric.evaluate(
            TargetFunction(backbone, sae, 0, [latents[i]], [positions[i]]),
            x[i : i + 1],
            heatmap[i : i + 1],
            RunContext(batch_size=1),
        )
        torch.testing.assert_close(batch.raw_curve[i : i + 1], single.raw_curve, equal_nan=True)
        torch.testing.assert_close(batch.score[i : i + 1], single.score, equal_nan=True)
        torch.testing.assert_close(batch.info["full_z"][i : i + 1], single.info["full_z"])


def test_composites_are_evaluated_in_batches():
    backbone = CountingBackbone(patch_sum_backbone())
    target = TargetFunction(backbone, LinearReluSAE(torch.tensor(W[None], dtype=torch.float32)), 0, [0] * 3, [CLS] * 3)
    Insertion().evaluate(target, _images(3), torch.rand(3, 4, 4), RunContext(batch_size=16))
    assert backbone.calls == [16, 16, 16, 3]  # 3 rows x 17 points


@pytest.mark.parametrize("metric_class", [Insertion, Deletion], ids=["insertion", "deletion"])
def test_points_showing_the_same_image_share_one_forward(metric_class):
    """Two images, three targets each, two rankings per target (as two attributors): the blank, the full image
    and every set of patches two rankings share are forwarded once, and every curve is as computed alone."""
    backbone = CountingBackbone(patch_sum_backbone())
    w = np.random.default_rng(4).uniform(-0.2, 1.0, size=(3, N))
    sae = LinearReluSAE(torch.tensor(w, dtype=torch.float32))
    images = _images(2, seed=5)
    image_of_row = [0, 0, 0, 1, 1, 1] * 2
    latents, positions = [0, 1, 2, 0, 1, 2] * 2, [CLS, CLS, 1 + 5, CLS, CLS, 1 + 9] * 2
    generator = torch.Generator().manual_seed(6)
    first = torch.randn(6, 4, 4, generator=generator)
    second = first.clone()
    second[:, 3] = torch.randn(6, 4, generator=generator)  # agrees on the top rows' order, not the bottom row's
    heatmap = torch.cat([first, second])
    x = images[image_of_row]
    metric = metric_class(steps=1)

    batch = metric.evaluate(TargetFunction(backbone, sae, 0, latents, positions), x, heatmap, RunContext(batch_size=7))
    order = torch.argsort(-heatmap.flatten(1), dim=1, stable=True).numpy()
    distinct = {(image_of_row[r], frozenset(order[r, :k].tolist())) for r in range(12) for k in range(N + 1)}
    assert sum(backbone.calls) == len(distinct) < 12 * (N + 1)
    for i in range(12):
        single = metric.evaluate(
            TargetFunction(patch_sum_backbone(), sae, 0, [latents[i]], [positions[i]]), x[i : i + 1],
            heatmap[i : i + 1], RunContext(batch_size=4),
        )
        torch.testing.assert_close(batch.raw_curve[i : i + 1], single.raw_curve, equal_nan=True)


def _expected_with_blank(x: np.ndarray, blank: np.ndarray, w: np.ndarray, order: np.ndarray, inserting: bool):
    """Normalised curve of one row for any blank: composite images built in numpy, z read off the patch sums."""
    curve = []
    for count in range(N + 1):
        changed = np.zeros(N)
        changed[order[:count]] = 1
        pixels = np.kron(changed.reshape(4, 4), np.ones((2, 2)))[None]
        kept = pixels if inserting else 1 - pixels
        composite = x * kept + blank * (1 - kept)
        curve.append(max(0.0, (w * numpy_patch_sums(composite[None], (2, 2))[0]).sum()))
    curve = np.array(curve)
    return curve / (curve[-1] if inserting else curve[0])


@pytest.mark.parametrize("blank", ["mean", "blur"])
@pytest.mark.parametrize("metric_class", [Insertion, Deletion], ids=["insertion", "deletion"])
def test_mean_and_blur_blanks_match_a_numpy_reference(metric_class, blank):
    target, x, c = _linear_setup(W, seed=4)
    x64 = x[0].double().numpy()
    if blank == "mean":
        reference = np.broadcast_to(x64.mean(axis=(1, 2), keepdims=True), x64.shape)
    else:
        reference = numpy_gaussian_blur(x64[None], 1.5)[0]
    heatmap = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(5))
    result = metric_class(blank=blank, blur_sigma=1.5, clip=False).evaluate(target, x, heatmap, RunContext())

    order = np.argsort(-heatmap.reshape(-1).numpy(), kind="stable")
    expected = _expected_with_blank(x64, reference, W, order, metric_class.inserting)
    np.testing.assert_allclose(result.curve[0].numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sigma", [0.7, 1.5, 4.0, 50.0])
def test_gaussian_blur_matches_a_numpy_reference(sigma):
    x = torch.randn(2, 3, 8, 10, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    np.testing.assert_allclose(gaussian_blur(x, sigma).numpy(), numpy_gaussian_blur(x.numpy(), sigma), atol=1e-12)


def test_gaussian_blur_keeps_constants():
    constant = torch.full((1, 3, 16, 16), 0.25, dtype=torch.float64)
    torch.testing.assert_close(gaussian_blur(constant, 3.0), constant)


def test_default_blur_sigma_is_a_tenth_of_the_smaller_side():
    target, x, _ = _linear_setup(W, seed=7)
    heatmap = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(9))
    default = Insertion(blank="blur").evaluate(target, x, heatmap, RunContext())
    explicit = Insertion(blank="blur", blur_sigma=0.8).evaluate(target, x, heatmap, RunContext())
    other = Insertion(blank="blur", blur_sigma=2.0).evaluate(target, x, heatmap, RunContext())
    torch.testing.assert_close(default.raw_curve, explicit.raw_curve)
    assert not torch.allclose(default.raw_curve[0, 0], other.raw_curve[0, 0])


def test_a_heatmap_of_the_wrong_shape_is_refused():
    target, x, c = _linear_setup(W)
    with pytest.raises(ValueError, match=r"heatmap must have shape \[B, gh, gw\] = \[1, 4, 4\]"):
        Insertion().evaluate(target, x, torch.rand(1, 16), RunContext())
    with pytest.raises(ValueError, match="heatmap must have shape"):
        Deletion().evaluate(target, x, torch.rand(2, 4, 4), RunContext())


@pytest.mark.parametrize("metric", [Insertion, Deletion], ids=["insertion", "deletion"])
def test_the_curves_need_patches_that_tile_the_backbone_input(metric):
    assert metric().check_compatible(patch_sum_backbone()) == []
    untiled = patch_sum_backbone(image_size=(8, 9))  # a 4x4 grid of 2x2 patches leaves a column of pixels over
    (problem,) = metric().check_compatible(untiled)
    assert problem.startswith(f"{metric.name} blanks whole patches, but the grid of LinearPatchBackbone (handbuilt)")
    target = TargetFunction(untiled, LinearReluSAE(torch.ones(1, N)), 0, [0], [CLS])
    with pytest.raises(IncompatibleComponentError) as raised:
        metric().evaluate(target, torch.rand(1, 3, 8, 9), torch.rand(1, 4, 4), RunContext())
    assert str(raised.value) == problem


def test_the_params_model_rejects_bad_arguments():
    with pytest.raises(pydantic.ValidationError, match="steps"):
        PatchCurveParams(steps=0)
    with pytest.raises(pydantic.ValidationError, match="unknown blank 'noise'"):
        PatchCurveParams(blank="noise")
    with pytest.raises(pydantic.ValidationError, match="blur_sigma"):
        PatchCurveParams(blur_sigma=-1.0)


# --- a small real ViT -------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric_class", [Insertion, Deletion], ids=["insertion", "deletion"])
def test_vit_batch_equals_rows_one_by_one(metric_class):
    backbone = TinyTimmViT(seed=1)
    g = torch.Generator().manual_seed(8)
    sae = LinearReluSAE(torch.randn(6, 32, generator=g) / 32**0.5, torch.full((6,), 0.5), layer=1)
    x = torch.randn(3, 3, 32, 32, generator=g)
    target = TargetFunction(backbone, sae, 1, [0, 4, 2], [0, 0, 1 + 9])
    heatmap = torch.randn(3, 4, 4, generator=g)
    metric = metric_class(steps=2, blank="blur")

    batch = metric.evaluate(target, x, heatmap, RunContext(batch_size=7))
    full_z = target(x).detach()
    torch.testing.assert_close(batch.info["full_z"], full_z, rtol=1e-4, atol=1e-6)
    end = -1 if metric.inserting else 0
    torch.testing.assert_close(batch.raw_curve[:, end], torch.ones(3))
    for i in range(3):
        single = metric.evaluate(target.select([i]), x[i : i + 1], heatmap[i : i + 1], RunContext(batch_size=1))
        torch.testing.assert_close(batch.raw_curve[i : i + 1], single.raw_curve, rtol=1e-4, atol=1e-5)
    assert all(p.grad is None for p in backbone.model.parameters())


@pytest.mark.parametrize(
    "metric",
    [Insertion(), Deletion(), Insertion(steps=3, blank="mean", clip=False), Deletion(steps=5, blank="blur")],
    ids=["insertion", "deletion", "insertion-mean-unclipped", "deletion-blur"],
)
def test_conformance(metric):
    backbone = TinyTimmViT(seed=2)
    g = torch.Generator().manual_seed(10)
    sae = LinearReluSAE(torch.randn(4, 32, generator=g) / 32**0.5, torch.full((4,), 0.5), layer=0)
    target = TargetFunction(backbone, sae, 0, [0, 1, 3], [0, 1 + 2, 0])
    x = torch.randn(3, 3, 32, 32, generator=g)
    check_metric(metric, target, x, torch.randn(3, 4, 4, generator=g), RunContext(batch_size=4))

    linear_target, linear_x, c = _linear_setup(np.stack([W, W[::-1]]), b=2)
    linear_target = TargetFunction(linear_target.backbone, linear_target.sae, 0, [0, 1], [CLS, CLS])
    check_metric(metric, linear_target, linear_x, _heatmap(c), RunContext(batch_size=4))


# --- discovery ---------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:cafe plugin:RuntimeWarning")
def test_metrics_are_discovered_through_entry_points():
    registry = PluginHost().registry("metric")
    insertion = registry.get("insertion").build({})
    deletion = registry.get("deletion").build({"steps": 4, "blank": "blur", "blur_sigma": 2.0, "clip": False})
    assert isinstance(insertion, Insertion) and isinstance(deletion, Deletion)
    assert (insertion.steps, insertion.blank, insertion.clip) == (1, "zeros", True)
    assert (deletion.steps, deletion.blank, deletion.blur_sigma, deletion.clip) == (4, "blur", 2.0, False)


@pytest.mark.filterwarnings("ignore:cafe plugin:RuntimeWarning")
@pytest.mark.parametrize("name", ["insertion", "deletion"])
@pytest.mark.parametrize(
    "params", [{"steps": 0}, {"blank": "noise"}, {"blur_sigma": 0.0}, {"step": 2}], ids=str
)
def test_bad_metric_params_fail_validation(name, params):
    with pytest.raises(pydantic.ValidationError):
        PluginHost().registry("metric").get(name).build(params)


# -- own_patch_share ------------------------------------------------------------------------------------------


def test_own_patch_share_hand_computed():
    from types import SimpleNamespace

    from cafe_faithfulness.locality import OwnPatchShare

    backbone = SimpleNamespace(prefix_tokens=("cls",), grid_size=(2, 2))
    target = SimpleNamespace(backbone=backbone, layer=0, positions=torch.tensor([1, 4, 0, 2]))
    heat = torch.tensor(
        [
            [[3.0, 1.0], [-5.0, 0.0]],  # own patch 0: 3 / (3 + 1)
            [[1.0, 1.0], [1.0, 1.0]],  # own patch 3: 1 / 4
            [[1.0, 1.0], [1.0, 1.0]],  # class token: no patch of its own
            [[-1.0, -2.0], [0.0, 0.0]],  # no positive relevance
        ]
    )
    score = OwnPatchShare().evaluate(target, torch.zeros(4, 3, 2, 2), heat, None).score
    assert score[:2].tolist() == [0.75, 0.25]
    assert torch.isnan(score[2:]).all()


# -- blanks from another plugin ---------------------------------------------------------------------------


def half_brightness(x):
    """A custom blank for the tests: the image at half its value."""
    return x / 2


def test_a_blank_named_by_module_and_function_is_used_everywhere_blanks_are():
    from pydantic import ValidationError

    from cafe_core.blanks import make_blank
    from cafe_core.plugins import PluginHost

    x = torch.randn(2, 3, 4, 4)
    reference = f"{__name__}:half_brightness"
    assert torch.equal(make_blank(x, reference), x / 2)
    host = PluginHost()
    for kind, name, key in [("metric", "insertion", "blank"), ("attributor", "occlusion", "blank"),
                            ("attributor", "integrated_gradients", "blank")]:
        registration = host.registry(kind).get(name)
        assert getattr(registration.validate({key: reference}), key) == reference
        with pytest.raises(ValidationError, match="unknown blank 'noise'"):
            registration.validate({key: "noise"})
    with pytest.raises(ValueError, match="returned"):
        make_blank(x, "torch:flatten")
