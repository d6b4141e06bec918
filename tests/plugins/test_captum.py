"""The Captum attributors against hand-derived values, autograd, and a tiny real ViT with a ReLU SAE."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest
import torch

from cafe_baselines.gradient_x_input import GradientXInput
from cafe_captum.gradient_shap import GradientShap
from cafe_captum.input_x_gradient import InputXGradient
from cafe_captum.integrated_gradients import IntegratedGradients
from cafe_captum.params import GradientShapParams, IntegratedGradientsParams
from cafe_captum.rng import seeded_global_rng
from cafe_captum.saliency import Saliency
from cafe_core.errors import IncompatibleComponentError
from cafe_core.patches import pixels_to_patches
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
PIXELS_PER_PATCH = 3 * 2 * 2


class LinearReluSAEWithPre(LinearReluSAE):
    """The hand-built SAE with the pre-activation accessor of cafe-plugin-sae."""

    def pre_activation_latents(self, h: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return (h * self.w_enc[latents]).sum(dim=-1) + self.b_enc[latents]


def _sums(x: torch.Tensor) -> np.ndarray:
    return numpy_patch_sums(x.double().numpy(), (2, 2))


def _legendre_weight_beyond(kink: float, n_steps: int) -> float:
    """Total Gauss-Legendre weight on [0, 1] of the nodes past ``kink``."""
    nodes, weights = np.polynomial.legendre.leggauss(n_steps)
    return float((0.5 * weights)[0.5 * (1 + nodes) > kink].sum())


@pytest.fixture
def linear():
    backbone = patch_sum_backbone()
    w = _weights(1)
    return backbone, LinearReluSAEWithPre(torch.tensor(w, dtype=torch.float32)), w


ALL = [IntegratedGradients, Saliency, InputXGradient, GradientShap]


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_components_satisfy_the_protocol(cls):
    assert isinstance(cls(), Attributor)
    assert (cls.needs_grad, cls.conserves_relevance) == (True, False)


# --- the hand-built linear model: z = relu(sum_i w_i s_i + b) at the class token -------------------------


@pytest.mark.parametrize("n_steps", [1, 5, 32])
def test_integrated_gradients_from_zeros_is_gradient_times_input_above_the_kink(linear, n_steps):
    backbone, sae, w = linear
    x = _images(2, seed=1)
    target = TargetFunction(backbone, sae, 0, [0, 2], [CLS, CLS])
    out = IntegratedGradients(n_steps=n_steps).attribute(target, x, RunContext(batch_size=4))

    s = _sums(x)
    expected = w[[0, 2]] * s
    np.testing.assert_allclose(out.heatmap.reshape(2, -1).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(out.info["value"].numpy(), expected.sum(1), rtol=1e-5)
    np.testing.assert_allclose(out.info["blank_value"].numpy(), 0, atol=1e-7)
    np.testing.assert_allclose(out.info["delta"].numpy(), 0, atol=1e-4)
    assert (out.info["relative_delta"] < 1e-5).all()
    assert out.pixels.shape == (2, 8, 8)


@pytest.mark.parametrize("blank", ["mean", "blur"])
def test_integrated_gradients_from_an_image_blank(linear, blank):
    # From a positive blank to a positive image the pre-activation stays positive: the path is linear.
    backbone, sae, w = linear
    x = _images(3, seed=2)
    target = TargetFunction(backbone, sae, 0, [0, 1, 2], [CLS, CLS, 1 + 5])
    out = IntegratedGradients(n_steps=4, blank=blank).attribute(target, x, RunContext(batch_size=8))

    xn = x.double().numpy()
    if blank == "mean":
        blank = xn.mean(axis=(2, 3), keepdims=True).repeat(8, 2).repeat(8, 3)
    else:
        blank = numpy_gaussian_blur(xn, 0.8)
    diff = numpy_patch_sums(xn, (2, 2)) - numpy_patch_sums(blank, (2, 2))
    expected = w[[0, 1, 2]] * diff
    expected[2, np.arange(N) != 5] = 0  # a patch token only sees its own patch
    np.testing.assert_allclose(out.heatmap.reshape(3, -1).numpy(), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.info["delta"].numpy(), 0, atol=1e-4)


def test_integrated_gradients_across_the_relu_kink(linear):
    # The bias puts the kink at a = 0.3 of the path from zeros: z = relu(c (a - 0.3)). Post-ReLU IG credits
    # w * s times the quadrature weight past the kink; the pre-activation is linear along the path.
    backbone, _, w = linear
    x = _images(1, seed=3)
    c = float((w[0] * _sums(x)[0]).sum())
    sae = LinearReluSAEWithPre(torch.tensor(w, dtype=torch.float32), torch.tensor([-0.3 * c, 0, 0]))
    target = TargetFunction(backbone, sae, 0, [0], [CLS])
    expected = w[0] * _sums(x)[0]

    relative = {}
    for n_steps in (2, 4, 8, 128):
        post = IntegratedGradients(n_steps=n_steps, quantity="post", start="blank").attribute(target, x, RunContext())
        pre = IntegratedGradients(n_steps=n_steps, quantity="pre").attribute(target, x, RunContext())
        beyond = _legendre_weight_beyond(0.3, n_steps)
        np.testing.assert_allclose(post.heatmap.reshape(-1).numpy(), expected * beyond, rtol=1e-4)
        np.testing.assert_allclose(post.info["delta"].item(), c * (beyond - 0.7), rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(pre.heatmap.reshape(-1).numpy(), expected, rtol=1e-4)
        np.testing.assert_allclose(pre.info["value"].item(), 0.7 * c, rtol=1e-5)
        np.testing.assert_allclose(pre.info["blank_value"].item(), -0.3 * c, rtol=1e-5)
        assert pre.info["relative_delta"].item() < 1e-5
        assert post.info["relative_delta"].item() > 100 * pre.info["relative_delta"].item()
        relative[n_steps] = post.info["relative_delta"].item()
    assert relative[2] > relative[4] > relative[8] > relative[128]
    assert relative[2] > 0.25 and relative[128] < 0.01


@pytest.mark.parametrize("n_steps", [1, 2, 8, 32])
def test_integrated_gradients_from_the_onset_is_the_many_step_limit_in_few_steps(linear, n_steps):
    # z = relu(c (a - 0.3)) along the path from zeros: z is zero up to a = 0.3 and linear after it, so the
    # limit of many steps credits w * s times 0.7 (the part of the path where z grows), which a path from
    # the onset gets with any number of steps.
    backbone, _, w = linear
    x = _images(1, seed=3)
    c = float((w[0] * _sums(x)[0]).sum())
    sae = LinearReluSAE(torch.tensor(w, dtype=torch.float32), torch.tensor([-0.3 * c, 0, 0]))
    target = TargetFunction(backbone, sae, 0, [0], [CLS])
    out = IntegratedGradients(n_steps=n_steps).attribute(target, x, RunContext())

    # z grows linearly past the kink, so the secant step after the bisections lands on it (up to float32
    # rounding of the kink's place).
    assert out.info["onset"].item() == pytest.approx(0.3, abs=1e-6)
    expected = w[0] * _sums(x)[0] * 0.7
    np.testing.assert_allclose(out.heatmap.reshape(-1).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(out.info["value"].item(), 0.7 * c, rtol=1e-5)
    assert out.info["blank_value"].item() == 0
    assert out.info["relative_delta"].item() < 1e-5


def test_the_onset_leaves_a_path_that_starts_on_as_it_is(linear):
    backbone, sae, w = linear
    x = _images(2, seed=2)
    target = TargetFunction(backbone, sae, 0, [0, 1], [CLS, CLS])
    for blank in ("mean", "blur"):  # positive blanks: the latent is on along the whole path
        onset = IntegratedGradients(n_steps=4, blank=blank).attribute(target, x, RunContext())
        plain = IntegratedGradients(n_steps=4, blank=blank, start="blank").attribute(target, x, RunContext())
        assert (onset.info["onset"] == 0).all()
        torch.testing.assert_close(onset.heatmap, plain.heatmap, rtol=0, atol=0)


def test_riemann_trapezoid_weights_sum_below_one(linear):
    # Captum's trapezoid rule weights sum to (n - 1) / n, so even a linear f keeps a delta of -(f(x) - f(x0)) / n.
    # (A positive bias keeps the latent on at the zero blank, away from the kink.)
    backbone, sae, _ = linear
    sae.b_enc = torch.full((3,), 0.5)
    x = _images(2, seed=4)
    target = TargetFunction(backbone, sae, 0, [0, 1], [CLS, CLS])
    out = IntegratedGradients(n_steps=5, method="riemann_trapezoid").attribute(target, x, RunContext())
    change = out.info["value"] - out.info["blank_value"]
    torch.testing.assert_close(out.info["delta"], -change / 5, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.info["relative_delta"], torch.full((2,), 0.2), rtol=1e-4, atol=1e-6)


def test_relative_delta_is_nan_where_the_function_does_not_change(linear):
    backbone, sae, _ = linear
    x = _images(1, seed=5)
    sae.b_enc = torch.tensor([-1e3, 0.0, 0.0])  # latent 0 is off on the whole path
    out = IntegratedGradients(n_steps=4).attribute(TargetFunction(backbone, sae, 0, [0], [CLS]), x, RunContext())
    assert torch.count_nonzero(out.heatmap) == 0
    assert out.info["delta"].item() == 0 and torch.isnan(out.info["relative_delta"]).all()


def test_pre_needs_an_sae_with_a_pre_activation(linear):
    backbone, _, w = linear
    target = TargetFunction(backbone, LinearReluSAE(torch.tensor(w, dtype=torch.float32)), 0, [0], [CLS])
    with pytest.raises(IncompatibleComponentError, match=r"pre_activation_latents.*LinearReluSAE \(handbuilt\)"):
        IntegratedGradients(quantity="pre").attribute(target, _images(1), RunContext())
    (problem,) = IntegratedGradients(quantity="pre").check_compatible(backbone, [target.sae])
    assert "pre_activation_latents" in problem and "LinearReluSAE (handbuilt)" in problem
    assert IntegratedGradients(quantity="post").check_compatible(backbone, [target.sae]) == []
    assert IntegratedGradients(quantity="pre").check_compatible(backbone, [linear[1]]) == []


def test_captum_input_x_gradient_equals_gradient_x_input(linear):
    backbone, sae, w = linear
    x = _images(3, seed=6) - 0.3
    target = TargetFunction(backbone, sae, 0, [0, 1, 2], [CLS, 1 + 7, CLS])
    ours = GradientXInput().attribute(target, x, RunContext(batch_size=2))
    theirs = InputXGradient().attribute(target, x, RunContext(batch_size=2))
    torch.testing.assert_close(theirs.heatmap, ours.heatmap, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(theirs.pixels, ours.pixels, rtol=1e-5, atol=1e-7)


def test_saliency_is_the_weight_of_every_pixel(linear):
    backbone, sae, w = linear
    x = _images(2, seed=7)
    target = TargetFunction(backbone, sae, 0, [0, 1], [CLS, 1 + 3])
    out = Saliency().attribute(target, x, RunContext())
    expected = PIXELS_PER_PATCH * w[[0, 1]]
    expected[1, np.arange(N) != 3] = 0
    np.testing.assert_allclose(out.heatmap.reshape(2, -1).numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("blank", ["zeros", "mean"])
def test_gradient_shap_without_noise_is_exact_on_a_linear_path(linear, blank):
    # The gradient is w at every point of the path, so every random draw gives (x - x0) * w.
    backbone, sae, w = linear
    x = _images(2, seed=8, low=0.1)
    target = TargetFunction(backbone, sae, 0, [0, 2], [CLS, CLS])
    out = GradientShap(n_samples=5, blank=blank).attribute(target, x, RunContext(batch_size=2))
    xn = x.double().numpy()
    s_blank = PIXELS_PER_PATCH / 3 * xn.mean(axis=(2, 3)).sum(1, keepdims=True) if blank == "mean" else 0
    np.testing.assert_allclose(out.heatmap.reshape(2, -1).numpy(), w[[0, 2]] * (_sums(x) - s_blank), rtol=1e-4)


def test_gradient_shap_noise_is_seeded_and_leaves_the_global_generators_alone(linear):
    backbone, sae, w = linear
    x = _images(2, seed=9, low=0.5)
    target = TargetFunction(backbone, sae, 0, [0, 1], [CLS, CLS])
    method = GradientShap(n_samples=6, stdevs=0.05)
    torch.manual_seed(123)
    np.random.seed(123)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()

    first = method.attribute(target, x, RunContext(seed=1)).heatmap
    again = method.attribute(target, x, RunContext(seed=1)).heatmap
    other = method.attribute(target, x, RunContext(seed=2)).heatmap
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state))
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, other)
    # The noise averages out: each heatmap stays near the noiseless one.
    np.testing.assert_allclose(first.reshape(2, -1).numpy(), w[[0, 1]] * _sums(x), rtol=0.2)


def test_gradient_shap_is_the_same_for_any_batch_size_at_least_n_samples(linear):
    backbone, sae, _ = linear
    x = _images(3, seed=10)
    target = TargetFunction(backbone, sae, 0, [0, 1, 2], [CLS, CLS, 1 + 2])
    method = GradientShap(n_samples=4, stdevs=0.1)
    small = method.attribute(target, x, RunContext(batch_size=4, seed=3)).heatmap
    large = method.attribute(target, x, RunContext(batch_size=64, seed=3)).heatmap
    torch.testing.assert_close(small, large)


def test_seeded_global_rng_restores_the_caller_streams():
    torch.manual_seed(5)
    np.random.seed(5)
    expected_torch, expected_numpy = torch.rand(3), np.random.rand(3)
    torch.manual_seed(5)
    np.random.seed(5)
    with seeded_global_rng(99):
        inside = torch.rand(2), np.random.rand(2)
    torch.testing.assert_close(torch.rand(3), expected_torch)
    np.testing.assert_array_equal(np.random.rand(3), expected_numpy)
    with seeded_global_rng(99):
        torch.testing.assert_close(torch.rand(2), inside[0])
        np.testing.assert_array_equal(np.random.rand(2), inside[1])


@pytest.mark.parametrize(
    "attributor",
    [
        IntegratedGradients(n_steps=4),
        IntegratedGradients(n_steps=3, quantity="pre"),
        Saliency(),
        InputXGradient(),
        GradientShap(n_samples=3, stdevs=0.1),
    ],
    ids=["ig", "ig_pre", "saliency", "input_x_gradient", "gradient_shap"],
)
def test_conformance_on_the_linear_model(linear, attributor):
    backbone, sae, _ = linear
    target = TargetFunction(backbone, sae, 0, [0, 1, 2], [CLS, 1 + 3, CLS])
    check_attributor(attributor, target, _images(3, seed=11), RunContext(batch_size=2))


# --- a small real ViT with a random ReLU SAE ---------------------------------------------------------------


@pytest.fixture(scope="module")
def vit():
    backbone = TinyTimmViT(seed=0)
    sae = ReluSAE.random_init(32, 64, seed=0, layer=1, tokens="all")
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    target = TargetFunction(backbone, sae, 1, [9, 24, 5, 9], [0, 0, 1 + 6, 1 + 11])
    return backbone, sae, target, x


VIT_METHODS = [
    IntegratedGradients(n_steps=6),
    IntegratedGradients(n_steps=5, method="riemann_middle", blank="blur", quantity="pre"),
    Saliency(),
    Saliency(abs=False),
    InputXGradient(),
    GradientShap(n_samples=5, stdevs=0.2, blank="mean"),
]
VIT_IDS = ["ig", "ig_pre_blur", "saliency", "saliency_signed", "input_x_gradient", "gradient_shap"]


@pytest.mark.parametrize("attributor", VIT_METHODS, ids=VIT_IDS)
def test_conformance_on_a_vit(vit, attributor):
    _, _, target, x = vit
    out = check_attributor(attributor, target, x, RunContext(batch_size=3))
    assert all(p.grad is None for p in target.sae.parameters())
    assert out.heatmap.abs().sum() > 0


@pytest.mark.parametrize("attributor", VIT_METHODS, ids=VIT_IDS)
def test_no_forward_pass_exceeds_the_batch_size(vit, attributor):
    backbone, sae, target, x = vit
    counting = CountingBackbone(backbone)
    counted = TargetFunction(counting, sae, 1, target.latents, target.positions)
    attributor.attribute(counted, x, RunContext(batch_size=3))
    assert counting.calls and max(counting.calls) <= 3
    assert len(counting.calls) > 1


def test_integrated_gradients_packs_steps_up_to_the_batch_size(vit):
    backbone, sae, target, x = vit
    counting = CountingBackbone(backbone)
    counted = TargetFunction(counting, sae, 1, target.latents[:2], target.positions[:2])
    IntegratedGradients(n_steps=7, start="blank").attribute(counted, x[:2], RunContext(batch_size=6))
    # The values at the two images and at their one zero blank, then the 2 x 7 points in passes of 6, 6, 2.
    assert counting.calls == [2, 1, 6, 6, 2]
    counting.calls.clear()
    out = IntegratedGradients(n_steps=7).attribute(counted, x[:2], RunContext(batch_size=6))
    # From the onset, for the rows off at the blank and on at the image only: 7 grid points and 16 bisections.
    cut = int(((out.info["blank_value"] <= 0) & (out.info["value"] > 0)).sum())
    assert cut and (out.info["onset"] > 0).sum() == cut
    assert counting.calls == [2, 1] + [cut] * 23 + [6, 6, 2]


def test_saliency_and_input_x_gradient_match_autograd(vit):
    _, _, target, x = vit
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(target(leaf).sum(), leaf)
    context = RunContext(batch_size=3)
    magnitude = Saliency().attribute(target, x, context).heatmap
    signed = Saliency(abs=False).attribute(target, x, context).heatmap
    torch.testing.assert_close(magnitude, pixels_to_patches(grad.abs(), (8, 8)), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(signed, pixels_to_patches(grad, (8, 8)), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(
        InputXGradient().attribute(target, x, context).heatmap,
        GradientXInput().attribute(target, x, context).heatmap,
        rtol=1e-4,
        atol=1e-7,
    )


@pytest.mark.parametrize("batching", ["rows", "shared", "jacobian"])
def test_saliency_and_input_x_gradient_of_many_latents_of_one_image_match_captum(vit, batching):
    """Four latents of one image share the gradient path; Captum, called directly per row, is the reference."""
    from captum.attr import InputXGradient as CaptumInputXGradient
    from captum.attr import Saliency as CaptumSaliency

    backbone, sae, _, x = vit
    latents, positions = [3, 7, 11, 3], [1 + 2, 1 + 5, 0, 1 + 9]
    target = TargetFunction(backbone, sae, 1, latents, positions)
    images = x[:1].expand(4, -1, -1, -1)
    context = RunContext(batch_size=4)
    ours = {
        "saliency": Saliency(batching=batching).attribute(target, images, context).heatmap,
        "input_x_gradient": InputXGradient(batching=batching).attribute(target, images, context).heatmap,
    }
    for i in range(4):
        row = TargetFunction(backbone, sae, 1, [latents[i]], [positions[i]])
        leaf = x[:1].clone().requires_grad_(True)
        saliency = CaptumSaliency(row).attribute(leaf, abs=True).detach()
        contribution = CaptumInputXGradient(row).attribute(x[:1].clone().requires_grad_(True)).detach()
        torch.testing.assert_close(
            ours["saliency"][i : i + 1], pixels_to_patches(saliency.sum(1), (8, 8)), rtol=1e-4, atol=1e-7
        )
        torch.testing.assert_close(
            ours["input_x_gradient"][i : i + 1], pixels_to_patches(contribution.sum(1), (8, 8)), rtol=1e-4, atol=1e-7
        )


def test_integrated_gradients_info_is_consistent_on_a_vit(vit):
    _, sae, target, x = vit
    out = IntegratedGradients(n_steps=8, blank="blur").attribute(target, x, RunContext(batch_size=4))
    with torch.no_grad():
        torch.testing.assert_close(out.info["value"], target(x))
    change = out.info["value"] - out.info["blank_value"]
    torch.testing.assert_close(out.heatmap.sum((1, 2)) - out.info["delta"], change, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(out.heatmap.sum((1, 2)), out.pixels.sum((1, 2)), rtol=1e-4, atol=1e-6)


def test_pre_converges_faster_than_post_across_the_kink_on_a_vit(vit):
    backbone, sae, _, x = vit
    with torch.no_grad():
        pre_image = sae.pre_activation(backbone.forward_to(x, 1)[:, 0])
        pre_blank = sae.pre_activation(backbone.forward_to(torch.zeros_like(x), 1)[:, 0])
    crossing = (pre_image > 0) & (pre_blank < 0)  # off at the blank, on at the image
    assert crossing.any(1).all()
    latents = crossing.float().argmax(1)
    target = TargetFunction(backbone, sae, 1, latents, [0] * len(x))
    context = RunContext(batch_size=64)

    def relative(n_steps: int, quantity: str, start: str = "blank") -> torch.Tensor:
        method = IntegratedGradients(n_steps=n_steps, quantity=quantity, start=start)
        return method.attribute(target, x, context).info["relative_delta"]

    assert (relative(16, "post") > 10 * relative(16, "pre")).all()
    assert relative(4, "post").mean() > 5 * relative(128, "post").mean()
    assert relative(4, "pre").mean() > 100 * relative(32, "pre").mean()
    # From the onset, z converges as its pre-activation does: far below the path from the blank.
    assert (relative(16, "post", "onset") < relative(16, "post") / 10).all()
    assert relative(4, "post", "onset").mean() > 100 * relative(32, "post", "onset").mean()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sampling_on_cuda_is_seeded_and_leaves_the_generators_alone():
    backbone = TinyTimmViT(seed=0)
    backbone.model.cuda()
    sae = ReluSAE.random_init(32, 64, seed=0, layer=1, tokens="all").cuda()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)).cuda()
    target = TargetFunction(backbone, sae, 1, [9, 24, 5], [0, 0, 1 + 6])
    context = RunContext(batch_size=3, device=torch.device("cuda"))
    cpu_state, cuda_state = torch.get_rng_state(), torch.cuda.get_rng_state()
    out = check_attributor(GradientShap(n_samples=4, stdevs=0.1), target, x, context)
    check_attributor(IntegratedGradients(n_steps=4, quantity="pre"), target, x, context)
    assert out.heatmap.is_cuda
    assert torch.equal(torch.get_rng_state(), cpu_state) and torch.equal(torch.cuda.get_rng_state(), cuda_state)


# --- discovery and params ------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:cafe plugin:RuntimeWarning")
def test_attributors_are_discovered_through_entry_points():
    registry = PluginHost().registry("attributor")
    ig = registry.get("integrated_gradients").build({"n_steps": 8, "quantity": "pre", "blank": "blur"})
    assert isinstance(ig, IntegratedGradients) and (ig.n_steps, ig.quantity, ig.blank) == (8, "pre", "blur")
    assert registry.get("integrated_gradients").build({}).n_steps == 32
    assert registry.get("saliency").build({}).abs is True
    assert isinstance(registry.get("input_x_gradient").build({}), InputXGradient)
    shap = registry.get("gradient_shap").build({"n_samples": 4, "stdevs": 0.1})
    assert isinstance(shap, GradientShap) and (shap.n_samples, shap.stdevs, shap.blank) == (4, 0.1, "zeros")


@pytest.mark.filterwarnings("ignore:cafe plugin:RuntimeWarning")
@pytest.mark.parametrize(
    "name, params",
    [
        ("integrated_gradients", {"n_steps": 0}),
        ("integrated_gradients", {"method": "simpson"}),
        ("integrated_gradients", {"method": "riemann_left", "n_steps": 1}),
        ("integrated_gradients", {"blank": "noise"}),
        ("integrated_gradients", {"blank": "zeros", "baseline": "zeros"}),
        ("integrated_gradients", {"quantity": "mid"}),
        ("integrated_gradients", {"blur_sigma": 0}),
        ("integrated_gradients", {"steps": 8}),
        ("saliency", {"abs": "sometimes"}),
        ("input_x_gradient", {"abs": True}),
        ("gradient_shap", {"n_samples": 0}),
        ("gradient_shap", {"stdevs": -0.1}),
        ("gradient_shap", {"baselines": "zeros"}),
    ],
)
def test_bad_params_fail_validation(name, params):
    with pytest.raises(pydantic.ValidationError):
        PluginHost().registry("attributor").get(name).build(params)


def test_the_old_baseline_key_still_names_the_blank_with_a_deprecation_warning():
    for params in (IntegratedGradientsParams, GradientShapParams):
        with pytest.warns(DeprecationWarning, match="`baseline` is deprecated, write `blank` instead"):
            assert params(baseline="mean").blank == "mean"


def test_params_models_reject_bad_values_with_the_reason():
    with pytest.raises(pydantic.ValidationError, match="'riemann_trapezoid' needs n_steps >= 2"):
        IntegratedGradientsParams(n_steps=1, method="riemann_trapezoid")
    with pytest.raises(pydantic.ValidationError, match="quantity"):
        IntegratedGradientsParams(quantity="mid")
    with pytest.raises(pydantic.ValidationError, match="unknown blank 'noise'"):
        GradientShapParams(blank="noise")
    with pytest.raises(pydantic.ValidationError, match="blur_sigma"):
        GradientShapParams(blur_sigma=float("inf"))
