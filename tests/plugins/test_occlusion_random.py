"""The occlusion and random-ranking baselines against hand-derived values and a tiny real ViT."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest
import torch

from cafe_baselines.occlusion import Occlusion
from cafe_baselines.params import OcclusionParams
from cafe_baselines.random_ranking import RandomRanking, row_seed
from cafe_core.errors import IncompatibleComponentError
from cafe_core.plugins import PluginHost
from cafe_core.protocols import Attributor, RunContext, TargetFunction
from cafe_core.testing import check_attributor
from cafe_sae import ReluSAE
from handbuilt import (
    CountingBackbone,
    LinearReluSAE,
    TinyTimmViT,
    numpy_gaussian_blur,
    numpy_patch_sums,
    patch_sum_backbone,
    patch_sum_images as _images,
    positive_patch_weights as _weights,
)

GRID = (4, 4)
N = 16
CLS = 0


def _sums(x: np.ndarray) -> np.ndarray:
    return numpy_patch_sums(x, (2, 2))


@pytest.fixture
def linear():
    backbone = patch_sum_backbone()
    w = _weights(1)
    return backbone, LinearReluSAE(torch.tensor(w, dtype=torch.float32)), w


@pytest.mark.parametrize("cls", [Occlusion, RandomRanking], ids=lambda c: c.__name__)
def test_components_satisfy_the_protocol(cls):
    assert isinstance(cls(), Attributor)
    assert (cls.needs_grad, cls.conserves_relevance) == (False, False)


# --- occlusion ---------------------------------------------------------------------------------------------


def test_occluding_a_patch_with_zeros_removes_its_term(linear):
    # z = relu(sum_i w_i s_i) with every term positive: blanking patch p removes exactly w_p s_p.
    backbone, sae, w = linear
    x = _images(2, seed=1)
    target = TargetFunction(backbone, sae, 0, [0, 2], [CLS, CLS])
    out = Occlusion().attribute(target, x, RunContext(batch_size=5))
    s = _sums(x.double().numpy())
    np.testing.assert_allclose(out.heatmap.reshape(2, -1).numpy(), w[[0, 2]] * s, rtol=1e-4)
    np.testing.assert_allclose(out.info["z"].numpy(), (w[[0, 2]] * s).sum(1), rtol=1e-5)


def test_occlusion_saturates_at_the_relu_kink(linear):
    # With a bias leaving z = 2.5 above the kink, hiding patch p lowers z by min(z, w_p s_p).
    backbone, _, w = linear
    x = _images(1, seed=2)
    s = _sums(x.double().numpy())[0]
    c = float((w[0] * s).sum())
    sae = LinearReluSAE(torch.tensor(w, dtype=torch.float32), torch.tensor([2.5 - c, 0.0, 0.0]))
    out = Occlusion().attribute(TargetFunction(backbone, sae, 0, [0], [CLS]), x, RunContext())
    expected = np.minimum(2.5, w[0] * s)
    assert (w[0] * s > 2.5).any() and (w[0] * s < 2.5).any()
    np.testing.assert_allclose(out.heatmap.reshape(-1).numpy(), expected, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("blank", ["mean", "blur"])
def test_occlusion_with_an_image_blank(linear, blank):
    backbone, sae, w = linear
    x = _images(2, seed=3)
    target = TargetFunction(backbone, sae, 0, [1, 2], [CLS, 1 + 6])
    method = Occlusion(blank=blank, blur_sigma=1.5 if blank == "blur" else None)
    out = method.attribute(target, x, RunContext(batch_size=7))

    xn = x.double().numpy()
    if blank == "mean":
        filled = xn.mean(axis=(2, 3), keepdims=True).repeat(8, 2).repeat(8, 3)
    else:
        filled = numpy_gaussian_blur(xn, 1.5)
    drop = w[[1, 2]] * (_sums(xn) - _sums(filled))
    drop[1, np.arange(N) != 6] = 0  # a patch token only sees its own patch
    np.testing.assert_allclose(out.heatmap.reshape(2, -1).numpy(), drop, rtol=1e-4, atol=1e-6)


def test_occlusion_runs_batched_forwards_within_the_batch_size(linear):
    backbone, sae, _ = linear
    counting = CountingBackbone(backbone)
    target = TargetFunction(counting, sae, 0, [0, 1, 2], [CLS, CLS, 1 + 4])
    with torch.no_grad():  # no backward pass is needed
        Occlusion().attribute(target, _images(3, seed=4), RunContext(batch_size=5))
    # 3 images x (16 occluded copies + the image itself), in passes of 5.
    assert counting.calls == [5] * 10 + [1]


def test_latents_of_one_image_share_its_occluded_forwards(linear):
    backbone, sae, _ = linear
    counting = CountingBackbone(backbone)
    x = _images(2, seed=7)[[0, 0, 1, 0]]  # three latents of the first image, one of the second
    latents, positions = [0, 1, 2, 1], [CLS, CLS, 1 + 4, 1 + 9]
    shared = Occlusion().attribute(TargetFunction(counting, sae, 0, latents, positions), x, RunContext(batch_size=6))
    assert sum(counting.calls) == 2 * (N + 1)
    for i in range(4):
        alone = Occlusion().attribute(
            TargetFunction(backbone, sae, 0, [latents[i]], [positions[i]]), x[i : i + 1], RunContext(batch_size=3)
        )
        torch.testing.assert_close(shared.heatmap[i : i + 1], alone.heatmap)
        torch.testing.assert_close(shared.info["z"][i : i + 1], alone.info["z"])


def test_occlusion_rejects_an_input_off_the_grid(linear):
    backbone, sae, _ = linear
    message = "4x4 patches of 2x2 pixels, covers 8x8 pixels and the input is 6x8"
    with pytest.raises(IncompatibleComponentError, match=message):
        Occlusion().attribute(TargetFunction(backbone, sae, 0, [0], [CLS]), torch.rand(1, 3, 6, 8), RunContext())


def test_occlusion_needs_patches_that_tile_the_backbone_input(linear):
    _, sae, _ = linear
    assert Occlusion().check_compatible(patch_sum_backbone()) == []
    untiled = patch_sum_backbone(image_size=(9, 8))  # a 4x4 grid of 2x2 patches leaves a row of pixels over
    (problem,) = Occlusion().check_compatible(untiled)
    assert problem.startswith("occlusion blanks whole patches, but the grid of LinearPatchBackbone (handbuilt)")
    with pytest.raises(IncompatibleComponentError) as raised:
        Occlusion().attribute(TargetFunction(untiled, sae, 0, [0], [CLS]), torch.rand(1, 3, 9, 8), RunContext())
    assert str(raised.value) == problem


@pytest.mark.parametrize("blank", ["zeros", "mean", "blur"])
def test_occlusion_conformance_on_the_linear_model(linear, blank):
    backbone, sae, _ = linear
    target = TargetFunction(backbone, sae, 0, [0, 1, 2], [CLS, 1 + 3, CLS])
    check_attributor(Occlusion(blank=blank), target, _images(3, seed=5), RunContext(batch_size=4))


# --- random ranking ----------------------------------------------------------------------------------------


def test_random_rows_depend_on_the_seed_and_the_target_only(linear):
    backbone, sae, _ = linear
    x = _images(4, seed=6)
    target = TargetFunction(backbone, sae, 0, [0, 0, 1, 0], [CLS, CLS, CLS, 1 + 2])
    out = RandomRanking().attribute(target, x, RunContext(seed=3))
    assert out.heatmap.shape == (4, *GRID) and out.heatmap.dtype == x.dtype
    assert ((out.heatmap >= 0) & (out.heatmap < 1)).all()
    torch.testing.assert_close(out.heatmap[0], out.heatmap[1])  # same target, other image
    assert not torch.allclose(out.heatmap[0], out.heatmap[2])  # other latent
    assert not torch.allclose(out.heatmap[0], out.heatmap[3])  # other token
    reseeded = RandomRanking().attribute(target, x, RunContext(seed=4)).heatmap
    assert not torch.allclose(out.heatmap, reseeded)
    generator = torch.Generator().manual_seed(row_seed(3, 0, 1, CLS))
    torch.testing.assert_close(out.heatmap[2], torch.rand(*GRID, generator=generator, dtype=torch.float64).float())


def test_random_per_image_gives_each_image_its_own_ranking(linear):
    backbone, sae, _ = linear
    x = _images(2, seed=7)
    target = TargetFunction(backbone, sae, 0, [0, 0], [CLS, CLS])
    out = RandomRanking(per_image=True).attribute(target, x, RunContext())
    assert not torch.allclose(out.heatmap[0], out.heatmap[1])
    same = RandomRanking(per_image=True).attribute(target, torch.cat([x[:1], x[:1]]), RunContext()).heatmap
    torch.testing.assert_close(same[0], same[1])
    torch.testing.assert_close(same[0], out.heatmap[0])


def test_random_runs_no_model_pass_and_ignores_the_batch_size(linear):
    backbone, sae, _ = linear
    counting = CountingBackbone(backbone)
    target = TargetFunction(counting, sae, 0, [0, 1, 2], [CLS, CLS, 1 + 4])
    x = _images(3, seed=8)
    small = RandomRanking().attribute(target, x, RunContext(batch_size=1)).heatmap
    large = RandomRanking().attribute(target, x, RunContext(batch_size=64)).heatmap
    torch.testing.assert_close(small, large)
    assert counting.calls == []


def test_random_top_patch_is_spread_over_the_grid():
    backbone = patch_sum_backbone()
    n_rows = 3200
    sae = LinearReluSAE(torch.ones(n_rows, N))
    target = TargetFunction(backbone, sae, 0, list(range(n_rows)), [CLS] * n_rows)
    heatmap = RandomRanking().attribute(target, torch.zeros(n_rows, 3, 8, 8), RunContext()).heatmap
    counts = np.bincount(heatmap.reshape(n_rows, -1).argmax(1).numpy(), minlength=N)
    expected = n_rows / N
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 50  # 15 degrees of freedom: P(chi2 > 50) < 1e-5


@pytest.mark.parametrize("per_image", [False, True])
def test_random_conformance_on_the_linear_model(linear, per_image):
    backbone, sae, _ = linear
    target = TargetFunction(backbone, sae, 0, [0, 1, 2], [CLS, 1 + 3, CLS])
    check_attributor(RandomRanking(per_image=per_image), target, _images(3, seed=9), RunContext(batch_size=2))


# --- a small real ViT -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vit():
    backbone = TinyTimmViT(seed=0)
    sae = ReluSAE.random_init(32, 64, seed=0, layer=1, tokens="all")
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    target = TargetFunction(backbone, sae, 1, [9, 24, 5, 9], [0, 0, 1 + 6, 1 + 11])
    return backbone, target, x


@pytest.mark.parametrize(
    "attributor",
    [
        Occlusion(),
        Occlusion(blank="mean"),
        Occlusion(blank="blur", blur_sigma=2.0),
        RandomRanking(),
        RandomRanking(per_image=True),
    ],
    ids=["occlusion_zeros", "occlusion_mean", "occlusion_blur", "random", "random_per_image"],
)
def test_conformance_on_a_vit(vit, attributor):
    _, target, x = vit
    check_attributor(attributor, target, x, RunContext(batch_size=3))


def test_occlusion_on_a_vit_matches_one_image_at_a_time(vit):
    backbone, target, x = vit
    out = Occlusion(blank="mean").attribute(target, x, RunContext(batch_size=6))
    blank = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    expected = torch.empty(4, 16)
    with torch.no_grad():
        z = target(x)
        for b in range(4):
            for p in range(16):
                rows, cols = slice(p // 4 * 8, p // 4 * 8 + 8), slice(p % 4 * 8, p % 4 * 8 + 8)
                copy = x[b : b + 1].clone()
                copy[..., rows, cols] = blank[b : b + 1, :, rows, cols]
                expected[b, p] = z[b] - target.select([b])(copy)[0]
    torch.testing.assert_close(out.heatmap.reshape(4, 16), expected, rtol=1e-4, atol=1e-6)
    assert out.heatmap.abs().sum() > 0


# --- discovery and params ------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:cafe plugin:RuntimeWarning")
def test_attributors_are_discovered_through_entry_points():
    registry = PluginHost().registry("attributor")
    occlusion = registry.get("occlusion").build({"blank": "blur", "blur_sigma": 3.0})
    assert isinstance(occlusion, Occlusion) and (occlusion.blank, occlusion.blur_sigma) == ("blur", 3.0)
    assert registry.get("occlusion").build({}).blank == "zeros"
    assert isinstance(registry.get("random").build({}), RandomRanking)
    assert registry.get("random").build({"per_image": True}).per_image is True


@pytest.mark.filterwarnings("ignore:cafe plugin:RuntimeWarning")
@pytest.mark.parametrize(
    "name, params",
    [
        ("occlusion", {"blank": "noise"}),
        ("occlusion", {"blur_sigma": -1.0}),
        ("occlusion", {"steps": 2}),
        ("random", {"seed": 3}),
        ("random", {"per_image": "sometimes"}),
    ],
)
def test_bad_params_fail_validation(name, params):
    with pytest.raises(pydantic.ValidationError):
        PluginHost().registry("attributor").get(name).build(params)


def test_occlusion_params_reject_bad_values():
    with pytest.raises(pydantic.ValidationError, match="unknown blank 'noise'"):
        OcclusionParams(blank="noise")
    with pytest.raises(pydantic.ValidationError, match="blur_sigma"):
        OcclusionParams(blur_sigma=0.0)
