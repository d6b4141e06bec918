"""The baseline attributors against hand-derived values and a tiny real ViT."""

from __future__ import annotations

import re
import numpy as np
import pydantic
import pytest
import torch

from cafe_baselines.activation_map import ActivationMap
from cafe_baselines.gradient_x_input import GradientXInput
from cafe_core.errors import IncompatibleComponentError
from cafe_core.patches import patches_to_pixels
from cafe_core.plugins import PluginHost
from cafe_core.protocols import Attributor, RunContext, TargetFunction
from cafe_core.testing import check_attributor, check_backbone, check_sae
from handbuilt import LinearReluSAE, TinyTimmViT, numpy_patch_sums, patch_sum_backbone

GRID = (4, 4)
N = 16
CLS = 0


def _images(b: int, seed: int = 0, low: float = 0.0) -> torch.Tensor:
    return low + torch.rand(b, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * (1 - low)


def _weights(seed: int, d_sae: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.1, 1.0, size=(d_sae, N))


@pytest.fixture
def linear():
    backbone = patch_sum_backbone()
    w = _weights(1)
    return backbone, LinearReluSAE(torch.tensor(w, dtype=torch.float32)), w


def test_components_satisfy_the_protocol():
    assert isinstance(ActivationMap(), Attributor) and isinstance(GradientXInput(), Attributor)
    assert (ActivationMap.needs_grad, ActivationMap.conserves_relevance) == (False, False)
    assert (GradientXInput.needs_grad, GradientXInput.conserves_relevance) == (True, False)


def test_activation_map_is_the_latent_at_each_patch_token(linear):
    backbone, sae, w = linear
    x = _images(3)
    latents = [0, 2, 1]
    target = TargetFunction(backbone, sae, 0, latents, [CLS, CLS, 1 + 5])
    out = ActivationMap().attribute(target, x, RunContext(batch_size=2))

    s = numpy_patch_sums(x.double().numpy(), (2, 2))
    expected = np.maximum(w[latents] * s, 0).reshape(3, *GRID)
    np.testing.assert_allclose(out.heatmap.numpy(), expected, rtol=1e-5)
    expected_z = [(w[0] * s[0]).sum(), (w[2] * s[1]).sum(), w[1, 5] * s[2, 5]]
    np.testing.assert_allclose(out.info["z"].numpy(), expected_z, rtol=1e-5)
    assert out.pixels is None


def test_activation_map_needs_a_layer_whose_tokens_are_the_heatmap_grid():
    from cafe_timm.conv import TimmConvNet

    kwargs = {"channels": (8, 16, 16, 16), "layers": (1, 1, 1, 1)}
    coarse = TimmConvNet("resnet18", img_size=64, model_kwargs=kwargs)  # 32-pixel patches: a 2x2 heatmap
    fine = TimmConvNet("resnet18", img_size=64, patch_size=8, model_kwargs=kwargs)  # stage 1's stride
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    sae = LinearReluSAE(torch.rand(2, 16, generator=torch.Generator().manual_seed(1)), layer=1)
    last_stage = ActivationMap().attribute(TargetFunction(coarse, sae, 3, [0], [0]), x, RunContext())
    fine_stage = ActivationMap().attribute(TargetFunction(fine, sae, 1, [0], [0]), x, RunContext())
    assert last_stage.heatmap.shape == (1, 2, 2) and fine_stage.heatmap.shape == (1, 8, 8)
    message = r"layer 1 per .* TimmConvNet \(cafe_timm\.conv\) has 8x8 tokens and the heatmap grid is 2x2.*patch_size"
    with pytest.raises(IncompatibleComponentError, match=message):
        ActivationMap().attribute(TargetFunction(coarse, sae, 1, [0], [0]), x, RunContext())
    (problem,) = ActivationMap().check_compatible(coarse, [sae])  # reported before a run, in the same words
    assert re.search(message, problem)
    assert ActivationMap().check_compatible(fine, [sae]) == []


def test_activation_map_is_blind_to_a_class_token_latent():
    # The latent fires when the image's total brightness passes a threshold no single patch reaches: active
    # on the class token, zero at every patch token.
    backbone = patch_sum_backbone()
    x = _images(1, low=0.5)
    threshold = numpy_patch_sums(x.double().numpy(), (2, 2)).sum() / 2
    sae = LinearReluSAE(torch.ones(1, N), torch.tensor([-threshold], dtype=torch.float32))
    target = TargetFunction(backbone, sae, 0, [0], [CLS])

    activation = ActivationMap().attribute(target, x, RunContext())
    gradient = GradientXInput().attribute(target, x, RunContext())
    assert activation.info["z"].item() > 0
    assert torch.count_nonzero(activation.heatmap) == 0
    assert (gradient.heatmap > 0).all()


def test_activation_map_without_prefix_tokens():
    backbone = patch_sum_backbone(cls=False)
    w = _weights(2, d_sae=2)
    x = _images(2)
    target = TargetFunction(backbone, LinearReluSAE(torch.tensor(w, dtype=torch.float32)), 0, [1, 0], [3, 0])
    out = ActivationMap().attribute(target, x, RunContext())
    s = numpy_patch_sums(x.double().numpy(), (2, 2))
    np.testing.assert_allclose(out.heatmap.numpy(), (w[[1, 0]] * s).reshape(2, *GRID), rtol=1e-5)


def test_gradient_x_input_is_the_contribution_of_each_patch(linear):
    backbone, sae, w = linear
    x = _images(2, seed=3)
    target = TargetFunction(backbone, sae, 0, [0, 1], [CLS, CLS])
    out = GradientXInput().attribute(target, x, RunContext())

    s = numpy_patch_sums(x.double().numpy(), (2, 2))
    np.testing.assert_allclose(out.heatmap.numpy(), (w[[0, 1]] * s).reshape(2, *GRID), rtol=1e-5)
    weight_of_pixel = patches_to_pixels(torch.tensor(w[[0, 1]]).reshape(2, *GRID), (2, 2)).numpy()
    np.testing.assert_allclose(out.pixels.numpy(), weight_of_pixel * x.double().sum(1).numpy(), rtol=1e-5)
    # Linear without bias: the map is complete.
    np.testing.assert_allclose(out.heatmap.sum((1, 2)).numpy(), out.info["z"].numpy(), rtol=1e-5)


def test_gradient_x_input_at_a_patch_token_only_sees_that_patch(linear):
    backbone, sae, w = linear
    x = _images(1, seed=4)
    out = GradientXInput().attribute(TargetFunction(backbone, sae, 0, [2], [1 + 9]), x, RunContext())
    s = numpy_patch_sums(x.double().numpy(), (2, 2))[0]
    expected = np.zeros(N)
    expected[9] = w[2, 9] * s[9]
    np.testing.assert_allclose(out.heatmap.reshape(-1).numpy(), expected, rtol=1e-5, atol=1e-7)


def test_gradient_x_input_absolute_does_not_cancel_within_a_patch(linear):
    backbone, sae, w = linear
    x = _images(1, seed=5) - 0.3  # mixed signs; the weights keep z > 0
    target = TargetFunction(backbone, sae, 0, [0], [CLS])
    assert target(x).item() > 0
    signed = GradientXInput().attribute(target, x, RunContext()).heatmap
    absolute = GradientXInput(absolute=True).attribute(target, x, RunContext()).heatmap

    s_abs = numpy_patch_sums(np.abs(x.double().numpy()), (2, 2))
    np.testing.assert_allclose(absolute.reshape(1, -1).numpy(), w[[0]] * s_abs, rtol=1e-5)
    assert (absolute >= signed.abs() - 1e-6).all()
    assert (absolute > signed.abs() + 1e-6).any()


@pytest.mark.parametrize("attributor", [ActivationMap(), GradientXInput()], ids=["activation", "gradient"])
def test_a_batch_equals_rows_one_by_one(linear, attributor):
    backbone, sae, _ = linear
    x = _images(5, seed=6)
    latents, positions = [0, 1, 2, 0, 1], [CLS, CLS, 4, 1 + 15, CLS]
    batch = attributor.attribute(TargetFunction(backbone, sae, 0, latents, positions), x, RunContext(batch_size=2))
    for i in range(5):
        single = attributor.attribute(
            TargetFunction(backbone, sae, 0, [latents[i]], [positions[i]]), x[i : i + 1], RunContext(batch_size=1)
        )
        torch.testing.assert_close(batch.heatmap[i : i + 1], single.heatmap)


def test_the_handbuilt_models_satisfy_the_core_protocols(linear):
    backbone, sae, _ = linear
    check_backbone(backbone, _images(2))
    check_backbone(patch_sum_backbone(cls=False), _images(2))
    check_sae(sae, torch.rand(5, N, generator=torch.Generator().manual_seed(8)))
    check_backbone(TinyTimmViT(), torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(8)))


@pytest.mark.parametrize("attributor", [ActivationMap(), GradientXInput(), GradientXInput(absolute=True)], ids=str)
def test_conformance_on_the_linear_model(linear, attributor):
    backbone, sae, _ = linear
    target = TargetFunction(backbone, sae, 0, [0, 1, 2], [CLS, 1 + 3, CLS])
    check_attributor(attributor, target, _images(3, seed=9), RunContext(batch_size=2))


# --- a small real ViT -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vit():
    backbone = TinyTimmViT(seed=0)
    g = torch.Generator().manual_seed(7)
    sae = LinearReluSAE(torch.randn(8, 32, generator=g) / 32**0.5, torch.full((8,), 0.5), layer=1)
    x = torch.randn(4, 3, 32, 32, generator=g)
    target = TargetFunction(backbone, sae, 1, [0, 3, 5, 3], [0, 0, 1 + 6, 1 + 11])
    return backbone, target, x


def _hooks(model: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )


def test_gradient_x_input_on_a_vit_matches_autograd(vit):
    backbone, target, x = vit
    hooks_before = _hooks(backbone.model)
    out = GradientXInput().attribute(target, x, RunContext(batch_size=3))

    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(target(leaf).sum(), leaf)
    torch.testing.assert_close(out.heatmap.sum((1, 2)), (x * grad).sum((1, 2, 3)), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.pixels, (x * grad).sum(1), rtol=1e-4, atol=1e-6)
    assert out.heatmap.shape == (4, 4, 4) and out.pixels.shape == (4, 32, 32)
    assert all(p.grad is None for p in backbone.model.parameters())
    assert _hooks(backbone.model) == hooks_before
    assert not backbone.model.training


@pytest.mark.parametrize("attributor", [ActivationMap(), GradientXInput()], ids=["activation", "gradient"])
def test_vit_batch_equals_rows_one_by_one(vit, attributor):
    _, target, x = vit
    batch = attributor.attribute(target, x, RunContext(batch_size=3))
    for i in range(len(x)):
        single = attributor.attribute(target.select([i]), x[i : i + 1], RunContext(batch_size=1))
        torch.testing.assert_close(batch.heatmap[i : i + 1], single.heatmap, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in target.backbone.model.parameters())


@pytest.mark.parametrize("attributor", [ActivationMap(), GradientXInput()], ids=["activation", "gradient"])
def test_conformance_on_a_vit(vit, attributor):
    _, target, x = vit
    check_attributor(attributor, target, x, RunContext(batch_size=3))


def test_activation_map_on_a_vit_reads_the_patch_tokens(vit):
    backbone, target, x = vit
    out = ActivationMap().attribute(target, x, RunContext(batch_size=3))
    h = backbone.forward_to(x, 1)[:, 1:]
    expected = target.sae.encode(h)[torch.arange(4)[:, None], :, target.latents[:, None]]
    torch.testing.assert_close(out.heatmap, expected.reshape(4, 4, 4), rtol=1e-5, atol=1e-6)


# --- discovery ---------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:cafe plugin:RuntimeWarning")
def test_attributors_are_discovered_through_entry_points():
    registry = PluginHost().registry("attributor")
    assert isinstance(registry.get("gradient_x_input").build({}), GradientXInput)
    assert registry.get("gradient_x_input").build({"absolute": True}).absolute is True
    assert isinstance(registry.get("activation_map").build({}), ActivationMap)


@pytest.mark.filterwarnings("ignore:cafe plugin:RuntimeWarning")
def test_bad_attributor_params_fail_validation():
    registry = PluginHost().registry("attributor")
    with pytest.raises(pydantic.ValidationError):
        registry.get("gradient_x_input").build({"absolut": True})
    with pytest.raises(pydantic.ValidationError):
        registry.get("gradient_x_input").build({"absolute": "sometimes"})
    with pytest.raises(pydantic.ValidationError):
        registry.get("activation_map").build({"absolute": True})
