"""zennit LRP attributors on small timm ResNets and ConvNeXts: conservation, canonizers, conformance, hygiene."""

from __future__ import annotations

import copy
import subprocess
import sys
import warnings

import pydantic
import pytest
import torch

pytest.importorskip("zennit")
pytest.importorskip("timm")
pytest.importorskip("cafe_zennit")

from torch.nn.utils.fusion import fuse_conv_bn_eval  # noqa: E402
from zennit.composites import EpsilonPlus  # noqa: E402

from cafe_core.errors import IncompatibleComponentError  # noqa: E402
from cafe_core.plugins import PluginHost  # noqa: E402
from cafe_core.protocols import Attributor, RunContext, TargetFunction  # noqa: E402
from cafe_core.testing import check_attributor  # noqa: E402
from cafe_core.testing.model_state import snapshot  # noqa: E402
from cafe_sae import ReluSAE  # noqa: E402
from cafe_timm.conv import TimmConvNet  # noqa: E402
from cafe_timm.vit import TimmViT  # noqa: E402
from cafe_zennit.architectures import UnsupportedModelError, extra_rules  # noqa: E402
from cafe_zennit.attributor import (  # noqa: E402
    EpsilonAlpha2Beta1LRP,
    EpsilonGammaBoxLRP,
    EpsilonPlusFlatLRP,
    EpsilonPlusLRP,
    input_bounds,
)
from cafe_zennit.canonizers import ExactSequentialMergeBatchNorm, TimmResNetBlockCanonizer  # noqa: E402
from cafe_zennit.params import EpsilonGammaBoxParams, EpsilonPlusParams  # noqa: E402
from cafe_zennit.relevance import composite_relevance, registered  # noqa: E402
from cafe_zennit.rules import LayerNormEpsilon  # noqa: E402

SIZE, D_SAE = 64, 32
METHODS = {
    "epsilon_plus": EpsilonPlusLRP,
    "epsilon_plus_flat": EpsilonPlusFlatLRP,
    "epsilon_gamma_box": EpsilonGammaBoxLRP,
    "epsilon_alpha2_beta1": EpsilonAlpha2Beta1LRP,
}
# Narrow models for the conformance kit; "wide" ones (32 channels) for the tight conservation checks: with
# few input channels, a 1x1 convolution has neurons without any positive contribution, whose relevance z+
# leaves to the stabiliser (reported as absorbed, but not the zero a bias-free model should give).
NARROW = {
    "resnet18": ("resnet18", {"channels": (8, 16, 16, 16), "layers": (1, 1, 1, 1)}),
    "convnext_atto": ("convnext_atto", {"depths": (1, 1, 1, 1), "dims": (8, 16, 16, 16)}),
}
WIDE = {
    "resnet18": ("resnet18", {"channels": (32, 32, 32, 32), "layers": (1, 1, 1, 1)}),
    "resnet50": ("resnet50", {"channels": (16, 16, 16, 16), "layers": (1, 1, 1, 1)}),
    "resnet10t": ("resnet10t", {"channels": (32, 32, 32, 32), "stem_width": 16}),
    "convnext_atto": ("convnext_atto", {"depths": (1, 1, 1, 1), "dims": (16, 16, 16, 16)}),
    "convnext_tiny": ("convnext_tiny", {"depths": (1, 1, 1, 1), "dims": (16, 16, 16, 16)}),
}


def _randomise(model: torch.nn.Module, seed: int, shift: float) -> None:
    """Non-trivial statistics and scales; biases and BatchNorm shifts drawn with scale ``shift`` (0: none)."""
    g = torch.Generator().manual_seed(seed)

    def noise(p: torch.Tensor) -> torch.Tensor:
        return torch.randn(p.shape, generator=g, dtype=torch.float64).to(p)

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.copy_(0.5 + noise(module.running_var).abs())
                module.weight.copy_(0.5 + noise(module.weight).abs())
                module.running_mean.copy_(shift * noise(module.running_mean))
                module.bias.copy_(shift * noise(module.bias))
            elif isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.2 * noise(module.weight))
                module.bias.copy_(shift * noise(module.bias))
            elif isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(noise(module.weight) * (2 / fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(shift * noise(module.bias))
            if getattr(module, "gamma", None) is not None:
                module.gamma.copy_(0.5 + noise(module.gamma).abs())


def _backbone(spec, seed=0, shift=0.0, dtype=torch.float64) -> TimmConvNet:
    name, kwargs = spec
    torch.manual_seed(seed)
    backbone = TimmConvNet(name, img_size=SIZE, model_kwargs=kwargs).to(dtype=dtype)
    _randomise(backbone.model, seed, shift)
    return backbone


def _sae(width: int, seed: int = 0, bias: float = 0.0, dtype=torch.float64) -> ReluSAE:
    sae = ReluSAE.random_init(width, D_SAE, seed=seed).to(dtype=dtype)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        sae.b_e.copy_(bias * torch.randn(D_SAE, generator=g))
        sae.b_d.copy_(bias * torch.randn(width, generator=g))
    return sae.requires_grad_(False)


def _images(n: int, seed: int = 1, dtype=torch.float64, positive: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    draw = torch.rand if positive else torch.randn
    return draw(n, 3, SIZE, SIZE, generator=g, dtype=torch.float64).to(dtype)


def _target(backbone, sae, x, layer, positions) -> TargetFunction:
    """Row ``i`` explains the latent most active at token ``positions[i]`` of image ``i``."""
    with torch.no_grad():
        codes = sae.encode(backbone.forward_to(x, layer))
    latents = codes[torch.arange(len(x)), torch.as_tensor(positions)].argmax(dim=-1)
    target = TargetFunction(backbone, sae, layer, latents, positions)
    with torch.no_grad():
        assert (target(x) > 0).all()
    return target


def _setup(spec, layer=1, seed=0, shift=0.0, sae_bias=0.0, dtype=torch.float64, n=3, positive=True):
    backbone = _backbone(spec, seed=seed, shift=shift, dtype=dtype)
    sae = _sae(backbone.layer_width(layer), seed=seed, bias=sae_bias, dtype=dtype)
    x = _images(n, seed=seed + 1, dtype=dtype, positive=positive)
    h, w = backbone.layer_grid(layer)
    positions = [0, w + 1, h * w - 1, (h // 2) * w + w // 2][:n]
    return backbone, _target(backbone, sae, x, layer, positions), x


def _relative_error(total: torch.Tensor, z: torch.Tensor) -> float:
    return float(((total - z).abs() / z.abs()).max())


# --- the protocol and the conformance kit ------------------------------------------------------------------


def test_components_satisfy_the_protocol():
    for cls in METHODS.values():
        assert isinstance(cls(), Attributor) and cls.needs_grad
    assert [cls.conserves_relevance for cls in METHODS.values()] == [True, True, True, False]
    for bad in ({"epsilon": 0.0}, {"stabilizer": -1.0}, {"epsilon": float("nan")}):
        with pytest.raises(pydantic.ValidationError):
            EpsilonPlusParams(**bad)
    with pytest.raises(pydantic.ValidationError, match="gamma"):
        EpsilonGammaBoxParams(gamma=-0.5)
    assert EpsilonGammaBoxParams(gamma=0.0).gamma == 0.0


@pytest.mark.parametrize("arch", sorted(NARROW))
@pytest.mark.parametrize("method", sorted(METHODS))
def test_conformance(method, arch):
    backbone, target, x = _setup(NARROW[arch], shift=0.3, sae_bias=0.2, dtype=torch.float32, positive=False)
    out = check_attributor(METHODS[method](), target, x, RunContext(batch_size=2))
    assert out.heatmap.shape == (3, 2, 2) and out.pixels.shape == (3, SIZE, SIZE)
    assert set(out.info) == {"z", "relevance_sum", "absorbed", "absorbed_sae", "excess", "conservation_error"}
    with torch.no_grad():
        z = target(x)
    # Every row's relevance is accounted for, alpha-beta included (its excess is reported, not hidden).
    assert out.info["conservation_error"].abs().max() <= 1e-4 * z.abs().max()
    torch.testing.assert_close(out.info["z"], z, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.info["relevance_sum"], out.heatmap.flatten(1).sum(1))


def test_one_forward_per_chunk_and_only_the_stages_up_to_the_layer_run():
    backbone, target, x = _setup(NARROW["resnet18"], dtype=torch.float32, n=3)
    calls = {name: 0 for name in ("layer1", "layer2", "layer3", "layer4", "fc")}
    handles = [
        getattr(backbone.model, name).register_forward_pre_hook(
            lambda module, args, name=name: calls.__setitem__(name, calls[name] + 1)
        )
        for name in calls
    ]
    try:
        EpsilonPlusLRP().attribute(target, x, RunContext(batch_size=2))
    finally:
        for handle in handles:
            handle.remove()
    assert calls == {"layer1": 2, "layer2": 2, "layer3": 0, "layer4": 0, "fc": 0}


# --- conservation, and what it catches ---------------------------------------------------------------------

CONSERVING = [
    ("epsilon_plus", "resnet18"),
    ("epsilon_plus", "resnet50"),
    ("epsilon_plus", "resnet10t"),
    ("epsilon_plus", "convnext_atto"),
    ("epsilon_plus", "convnext_tiny"),
    ("epsilon_alpha2_beta1", "resnet18"),
    ("epsilon_alpha2_beta1", "convnext_atto"),
    ("epsilon_plus_flat", "resnet18"),
    ("epsilon_gamma_box", "resnet18"),
    ("epsilon_gamma_box", "convnext_tiny"),
]


@pytest.mark.parametrize(("method", "arch"), CONSERVING)
def test_relevance_sums_to_z_when_nothing_absorbs_it(method, arch):
    # No biases, no BatchNorm shifts, no SAE biases, positive pixels: every rule here passes on all of its
    # relevance (up to its 1e-6 stabiliser), so the heatmap alone must sum to z.
    backbone, target, x = _setup(WIDE[arch], layer=2 if arch == "resnet18" else 1)
    out = METHODS[method]().attribute(target, x, RunContext(batch_size=3))
    with torch.no_grad():
        z = target(x)
    assert _relative_error(out.heatmap.flatten(1).sum(1), z) < 1e-4
    assert out.info["absorbed"].abs().max() < 1e-4 * z.abs().min()
    assert out.info["conservation_error"].abs().max() < 1e-10 * z.abs().max()


def _without_block_canonizers(backbone, keep_batch_norm_merge: bool):
    canonizers = [ExactSequentialMergeBatchNorm()] if keep_batch_norm_merge else []
    return EpsilonPlus(layer_map=extra_rules(backbone.model, 1e-6), canonizers=canonizers)


@pytest.mark.parametrize(
    ("arch", "keep_batch_norm_merge"),
    [("resnet18", True), ("resnet18", False), ("resnet50", True), ("convnext_atto", False)],
    ids=["resnet18-no-residual-sum", "resnet18-no-canonizer", "resnet50-no-residual-sum", "convnext-no-block"],
)
def test_a_missing_block_canonizer_breaks_conservation(arch, keep_batch_norm_merge):
    backbone, target, x = _setup(WIDE[arch], layer=1)
    with torch.no_grad():
        z = target(x)
    right = EpsilonPlusLRP().attribute(target, x, RunContext(batch_size=3))
    composite = _without_block_canonizers(backbone, keep_batch_norm_merge)
    wrong = composite_relevance(target, x, composite, RunContext(batch_size=3))
    # zennit runs without complaint: the residual sums hand the whole relevance to both branches (and the
    # ConvNeXt layer scale multiplies it), so the map sums to far more or less than z.
    assert _relative_error(right.heatmap.flatten(1).sum(1), z) < 1e-4
    assert _relative_error(wrong.heatmap.flatten(1).sum(1), z) > 0.3
    assert (wrong.info["conservation_error"].abs() > 0.3 * z.abs()).any()


def _fuse_batch_norms(model: torch.nn.Module) -> None:
    """Fold every BatchNorm of a timm resnet18 into the convolution before it, in place (no zennit)."""
    identity = torch.nn.Identity

    model.conv1, model.bn1 = fuse_conv_bn_eval(model.conv1, model.bn1), identity()
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in stage:
            for i in (1, 2):
                conv, bn = getattr(block, f"conv{i}"), getattr(block, f"bn{i}")
                setattr(block, f"conv{i}", fuse_conv_bn_eval(conv, bn))
                setattr(block, f"bn{i}", identity())
            if block.downsample is not None:
                block.downsample[0] = fuse_conv_bn_eval(block.downsample[0], block.downsample[1])
                block.downsample[1] = identity()


def test_batch_norm_merge_equals_a_fused_model_and_its_absence_is_caught():
    backbone = _backbone(WIDE["resnet18"], shift=0.5)
    with torch.no_grad():
        for bn in [m for m in backbone.model.modules() if isinstance(m, torch.nn.BatchNorm2d)][::3]:
            bn.weight[::2] *= -1  # a negative scale flips which contributions z+ counts as positive
    x = _images(3)
    target = _target(backbone, _sae(backbone.layer_width(1)), x, 1, [0, 9, 63])
    with torch.no_grad():
        z = target(x)
    fused = copy.deepcopy(backbone)
    _fuse_batch_norms(fused.model)
    fused_target = TargetFunction(fused, target.sae, target.layer, target.latents, target.positions)
    with torch.no_grad():
        torch.testing.assert_close(fused_target(x), z, rtol=1e-10, atol=0)
    context = RunContext(batch_size=3)

    merged = EpsilonPlusLRP().attribute(target, x, context)
    reference = composite_relevance(fused_target, x, EpsilonPlus(canonizers=[TimmResNetBlockCanonizer()]), context)
    unmerged = composite_relevance(target, x, EpsilonPlus(canonizers=[TimmResNetBlockCanonizer()]), context)

    scale = reference.pixels.abs().max()
    torch.testing.assert_close(merged.pixels, reference.pixels, rtol=1e-8, atol=1e-10 * scale)
    torch.testing.assert_close(merged.info["absorbed"], reference.info["absorbed"], rtol=1e-8, atol=1e-12)
    # The shifts absorb a good part of z; the heatmap plus that part is z.
    assert (merged.info["absorbed"] > 0.05 * z).all()
    assert _relative_error(merged.heatmap.flatten(1).sum(1) + merged.info["absorbed"], z) < 1e-10
    # Without the merge the BatchNorms get the pass-through rule: the shifts absorb nothing and the scales
    # never reach z+. The bookkeeping alone cannot see it (nothing unhooked duplicates relevance), but the
    # map and its sum are far from those of the same model with the BatchNorms folded in.
    assert (unmerged.pixels - reference.pixels).abs().max() > 0.1 * scale
    assert _relative_error(unmerged.heatmap.flatten(1).sum(1), z - reference.info["absorbed"]) > 0.05


def test_a_batch_norm_the_canonizers_miss_is_refused():
    backbone, target, x = _setup(NARROW["resnet18"], dtype=torch.float32)
    block = backbone.model.layer1[0]
    # Registering conv1 after bn1 hides the pair from a merge that follows the module order.
    block._modules["conv1"] = block._modules.pop("conv1")
    before = snapshot(backbone.model)
    with pytest.raises(UnsupportedModelError, match=r"layer1\.0\.bn1 \(BatchNorm2d not merged"):
        EpsilonPlusLRP().attribute(target, x, RunContext(batch_size=3))
    assert before.differences(snapshot(backbone.model)) == []
    assert all(m.eps == 1e-5 for m in backbone.model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_epsilon_plus_on_a_positive_network_is_gradient_times_input():
    # All weights positive, no shifts, positive pixels: every activation is positive, z+ is z, and LRP
    # reduces to gradient x input. The map must equal it: zennit's input gradient is the relevance itself.
    backbone = _backbone(NARROW["resnet18"], seed=3)
    with torch.no_grad():
        for module in backbone.model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.abs_()
    sae = _sae(backbone.layer_width(2), seed=3)
    x = _images(2, seed=4)
    target = _target(backbone, sae, x, 2, [0, 3])
    out = EpsilonPlusLRP(stabilizer=1e-12).attribute(target, x, RunContext(batch_size=2))
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(target(leaf).sum(), leaf)
    expected = (leaf * grad).detach().sum(dim=1)
    torch.testing.assert_close(out.pixels, expected, rtol=1e-8, atol=1e-10 * expected.abs().max())


def test_alpha_beta_excess_is_reported():
    # Narrow 1x1 downsampling convolutions have neurons with contributions of one sign only, where
    # alpha=2, beta=1 passes on 2R (or -R): the map then exceeds z by what `excess` reports.
    backbone, target, x = _setup(NARROW["resnet18"], layer=1)
    out = EpsilonAlpha2Beta1LRP().attribute(target, x, RunContext(batch_size=3))
    z = out.info["z"]
    assert (out.info["excess"].abs() > 1e-3 * z).any()
    total = out.heatmap.flatten(1).sum(1) + out.info["absorbed"] - out.info["excess"]
    assert _relative_error(total, z) < 1e-10


def test_sae_part_is_lrp_zero_on_the_encoder_row():
    backbone, target, x = _setup(NARROW["resnet18"], layer=1, sae_bias=0.3)
    out = EpsilonPlusLRP().attribute(target, x, RunContext(batch_size=3))
    sae = target.sae
    with torch.no_grad():
        h = target.tokens(x)[torch.arange(len(x)), target.positions]
        into_tokens = (sae.W_e[target.latents] * h).sum(-1)
    torch.testing.assert_close(out.info["absorbed_sae"], out.info["z"] - into_tokens, rtol=1e-10, atol=1e-12)


def test_layer_norm_rule_conserves_up_to_the_bias():
    g = torch.Generator().manual_seed(0)
    norm = torch.nn.LayerNorm(6).double()
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(6, generator=g, dtype=torch.float64))
        norm.bias.copy_(0.5 * torch.randn(6, generator=g, dtype=torch.float64))
    x = torch.randn(4, 5, 6, generator=g, dtype=torch.float64)
    relevance = torch.randn(4, 5, 6, generator=g, dtype=torch.float64)
    rule = LayerNormEpsilon(epsilon=1e-12)
    rule.forward(norm, (x,), norm(x))
    (into_x,) = rule.backward(norm, None, (relevance,))
    y = norm(x).detach()
    kept_by_bias = (relevance * norm.bias / y).sum(-1)
    torch.testing.assert_close(into_x.sum(-1), relevance.sum(-1) - kept_by_bias, rtol=1e-9, atol=1e-9)


def test_gamma_box_bounds_are_pixels_zero_and_one():
    backbone = _backbone(NARROW["resnet18"], dtype=torch.float32)
    low, high = input_bounds(backbone)
    assert low.shape == high.shape == (1, 3, 1, 1)
    x = backbone.preprocess([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)])
    torch.testing.assert_close(x[:1], low.expand(1, 3, SIZE, SIZE))
    torch.testing.assert_close(x[1:], high.expand(1, 3, SIZE, SIZE))


# --- hygiene -----------------------------------------------------------------------------------------------


class _FailingSAE(torch.nn.Module):
    def __init__(self, sae):
        super().__init__()
        self.inner = sae
        self.d_in, self.d_sae, self.layer, self.site = sae.d_in, sae.d_sae, sae.layer, sae.site

    def encode_latents(self, h, latents):
        raise RuntimeError("boom")


def test_canonizers_and_hooks_are_removed_when_the_call_raises():
    backbone, target, x = _setup(NARROW["convnext_atto"], dtype=torch.float32)
    resnet, resnet_target, resnet_x = _setup(NARROW["resnet18"], dtype=torch.float32)
    for bb, tg, xx in ((backbone, target, x), (resnet, resnet_target, resnet_x)):
        before = snapshot(bb.model)
        with torch.no_grad():
            z_before = tg(xx)
        failing = TargetFunction(bb, _FailingSAE(tg.sae), tg.layer, tg.latents, tg.positions)
        with pytest.raises(RuntimeError, match="boom"):
            EpsilonGammaBoxLRP().attribute(failing, xx, RunContext(batch_size=2))
        assert before.differences(snapshot(bb.model)) == []
        with torch.no_grad():
            assert torch.equal(tg(xx), z_before)
        # and the model can be explained again
        EpsilonPlusLRP().attribute(tg, xx, RunContext(batch_size=2))
        assert before.differences(snapshot(bb.model)) == []


def test_composites_cannot_be_nested():
    backbone, target, x = _setup(NARROW["resnet18"], dtype=torch.float32)
    with registered(backbone.model, EpsilonPlus()):
        with pytest.raises(RuntimeError, match="already has an LRP composite"):
            EpsilonPlusLRP().attribute(target, x, RunContext(batch_size=3))
    EpsilonPlusLRP().attribute(target, x, RunContext(batch_size=3))


def _vit():
    kwargs = {"depth": 2, "embed_dim": 16, "num_heads": 2, "patch_size": 8}
    return TimmViT("vit_tiny_patch16_224", img_size=32, model_kwargs=kwargs)


def _se_resnet():
    kwargs = {**NARROW["resnet18"][1], "block_args": {"attn_layer": "se"}}
    return TimmConvNet("resnet18", img_size=SIZE, model_kwargs=kwargs)


def _convnext_v2():
    return TimmConvNet("convnextv2_atto", img_size=SIZE, model_kwargs=NARROW["convnext_atto"][1])


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (_vit, "attnlrp"),
        (_se_resnet, r"layer1\.0\.se \(SEModule"),
        (_convnext_v2, r"stages\.0\.blocks\.0\.mlp \(GlobalResponseNormMlp"),
    ],
    ids=["vit", "squeeze-excitation", "global-response-norm"],
)
def test_unsupported_models_are_refused_without_touching_them(build, message):
    torch.manual_seed(0)
    backbone = build()
    width = backbone.width if isinstance(backbone, TimmViT) else backbone.layer_width(0)
    target = TargetFunction(backbone, _sae(width, dtype=torch.float32), 0, [0], [0])
    x = torch.rand(1, 3, *backbone.image_size)
    before = snapshot(backbone.model)
    with pytest.raises(UnsupportedModelError, match=message):
        EpsilonPlusLRP().attribute(target, x, RunContext())
    assert before.differences(snapshot(backbone.model)) == []


@pytest.mark.parametrize("method", list(METHODS.values()), ids=list(METHODS))
def test_compatibility_is_checked_before_any_image(method):
    for spec in NARROW.values():
        assert method().check_compatible(_backbone(spec, dtype=torch.float32)) == []
    (problem,) = method().check_compatible(_vit())
    assert "the backbone's model is a VisionTransformer (timm.models.vision_transformer)" in problem
    assert "'attnlrp' or 'cp_lrp'" in problem
    se_resnet = _se_resnet()
    (problem,) = method().check_compatible(se_resnet)
    assert f"stages 0..{se_resnet.depth - 1}" in problem
    assert [f"layer{i + 1}.0.se (SEModule" in problem for i in range(se_resnet.depth)] == [True] * se_resnet.depth


def test_the_runtime_error_is_the_problem_the_check_reports():
    backbone = _se_resnet()
    last = backbone.depth - 1
    (problem,) = EpsilonPlusLRP().check_compatible(backbone)
    target = TargetFunction(backbone, _sae(backbone.layer_width(last), dtype=torch.float32), last, [0], [0])
    with pytest.raises(IncompatibleComponentError) as raised:
        EpsilonPlusLRP().attribute(target, torch.rand(1, 3, *backbone.image_size), RunContext())
    assert str(raised.value) == problem


class _PixelInputConvNet:
    """A timm ResNet that takes pixels in [0, 1] and normalises them inside ``forward_to``: no mean and std."""

    def __init__(self, inner: TimmConvNet) -> None:
        self.inner = inner
        self.model = inner.model
        self.depth, self.width, self.prefix_tokens = inner.depth, inner.width, inner.prefix_tokens
        self.image_size, self.patch_size, self.grid_size = inner.image_size, inner.patch_size, inner.grid_size

    def layer_grid(self, layer):
        return self.inner.layer_grid(layer)

    def layer_width(self, layer):
        return self.inner.layer_width(layer)

    def preprocess(self, images):
        return self.inner.preprocess(images) * self.inner.std + self.inner.mean

    def forward_to(self, x, layer):
        return self.inner.forward_to((x - self.inner.mean) / self.inner.std, layer)


def test_gamma_box_needs_the_backbone_normalisation():
    backbone = _PixelInputConvNet(_backbone(NARROW["resnet18"], dtype=torch.float32))
    assert EpsilonPlusLRP().check_compatible(backbone) == []
    (problem,) = EpsilonGammaBoxLRP().check_compatible(backbone)
    assert "_PixelInputConvNet" in problem and "no mean and std" in problem
    target = TargetFunction(backbone, _sae(backbone.layer_width(1), dtype=torch.float32), 1, [0], [0])
    with pytest.raises(IncompatibleComponentError) as raised:
        EpsilonGammaBoxLRP().attribute(target, torch.rand(1, 3, *backbone.image_size), RunContext())
    assert str(raised.value) == problem


def test_batch_norm_in_training_mode_is_refused():
    backbone, target, x = _setup(NARROW["resnet18"], dtype=torch.float32)
    backbone.model.layer1.train()
    try:
        with pytest.raises(UnsupportedModelError, match="training mode"):
            EpsilonPlusLRP().attribute(target, x, RunContext())
    finally:
        backbone.model.eval()


# --- the plugin --------------------------------------------------------------------------------------------


def test_registration_imports_nothing_heavy():
    code = (
        "import sys, cafe_zennit.plugin;"
        "heavy = {'torch', 'zennit', 'timm', 'cafe_zennit.attributor'} & set(sys.modules);"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_attributors_are_discovered_through_entry_points():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # other installed plugins may warn; only this one matters here
        registry = PluginHost().registry("attributor")
    expected = {
        "lrp_epsilon_plus_flat": EpsilonPlusFlatLRP,
        "lrp_epsilon_gamma_box": EpsilonGammaBoxLRP,
        "lrp_epsilon_plus": EpsilonPlusLRP,
        "lrp_epsilon_alpha2_beta1": EpsilonAlpha2Beta1LRP,
    }
    for name, cls in expected.items():
        registration = registry.get(name)
        assert registration.plugin == "zennit"
        assert type(registration.build({})) is cls
    built = registry.get("lrp_epsilon_gamma_box").build({"gamma": 0.5, "epsilon": 1e-4})
    assert (built.gamma, built.epsilon) == (0.5, 1e-4)
    for name, bad in [
        ("lrp_epsilon_plus", {"epsilon": 0.0}),
        ("lrp_epsilon_plus_flat", {"stabilizer": -1e-6}),
        ("lrp_epsilon_gamma_box", {"gamma": -0.1}),
        ("lrp_epsilon_alpha2_beta1", {"epsilon": float("inf")}),
        ("lrp_epsilon_plus", {"gamma": 0.25}),
    ]:
        with pytest.raises(pydantic.ValidationError):
            registry.get(name).build(bad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    backbone, target, x = _setup(NARROW["convnext_atto"], dtype=torch.float32)
    expected = EpsilonGammaBoxLRP().attribute(target, x, RunContext(batch_size=3))
    backbone.to("cuda")
    target.sae.to("cuda")
    out = EpsilonGammaBoxLRP().attribute(target, x.cuda(), RunContext(batch_size=3, device=torch.device("cuda")))
    torch.testing.assert_close(out.heatmap.cpu(), expected.heatmap, rtol=1e-3, atol=1e-4 * expected.heatmap.abs().max())
    assert out.info["conservation_error"].abs().max() < 1e-3 * out.info["z"].abs().max()
