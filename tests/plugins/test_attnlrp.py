"""AttnLRP and CP-LRP on small timm ViTs: conformance, conservation, patch hygiene, and agreement with LXT."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pydantic
import pytest
import torch
import torch.nn.functional as F

from cafe_attnlrp.attributor import AttnLRP, CPLRP
from cafe_attnlrp.params import LRPParams
from cafe_attnlrp.patching import UnsupportedModelError, lrp_rules
from cafe_attnlrp.rules import gamma_linear
from cafe_baselines.gradient_x_input import GradientXInput
from cafe_core.errors import IncompatibleComponentError
from cafe_core.plugins import PluginHost
from cafe_core.protocols import Attributor, RunContext, TargetFunction
from cafe_core.testing import check_attributor
from cafe_core.testing.model_state import snapshot
from cafe_sae import ReluSAE
from cafe_timm.conv import TimmConvNet
from cafe_timm.vit import TimmViT
from handbuilt import CountingBackbone, patch_sum_backbone

WIDTH, D_SAE, LAYER = 32, 64, 1


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Give every parameter a non-trivial value, so that biases and embeddings absorb relevance."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for owner in module.modules():
            for name, p in owner.named_parameters(recurse=False):
                noise = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p)
                if hasattr(owner, "normalized_shape") and name == "weight":
                    p.copy_(1 + 0.2 * noise)
                elif p.dim() <= 1 or name in ("cls_token", "reg_token", "pos_embed", "class_token", "pos_embedding"):
                    p.copy_(0.2 * noise)
                else:
                    p.copy_(noise / p[0].numel() ** 0.5)


def _vit(seed: int = 0, depth: int = 3, patch: int = 8, **kwargs) -> TimmViT:
    kwargs = {"patch_size": patch, "depth": depth, "embed_dim": WIDTH, "num_heads": 2, **kwargs}
    backbone = TimmViT("vit_tiny_patch16_224", img_size=32, model_kwargs=kwargs)
    _randomise(backbone.model, seed)
    return backbone


def _sae(seed: int = 0, dtype: torch.dtype = torch.float32) -> ReluSAE:
    sae = ReluSAE.random_init(WIDTH, D_SAE, seed=seed, layer=LAYER).to(dtype=dtype)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        sae.b_e.copy_(0.3 * torch.randn(D_SAE, generator=g))
        sae.b_d.copy_(0.3 * torch.randn(WIDTH, generator=g))
    return sae.requires_grad_(False)


def _images(b: int, seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _active_target(backbone, sae, x, positions) -> TargetFunction:
    """Row ``i`` explains the latent most active at token ``positions[i]`` of image ``i``."""
    with torch.no_grad():
        codes = sae.encode(backbone.forward_to(x, LAYER))
    latents = codes[torch.arange(len(x)), torch.as_tensor(positions)].argmax(dim=-1)
    target = TargetFunction(backbone, sae, LAYER, latents, positions)
    with torch.no_grad():
        assert (target(x) > 0).all()
    return target


@pytest.fixture(scope="module")
def vit():
    backbone, sae, x = _vit(), _sae(), _images(4)
    prefix = len(backbone.prefix_tokens)
    return backbone, sae, x, _active_target(backbone, sae, x, [0, prefix + 5, 0, prefix + 12])


# --- the protocol and the conformance kit ------------------------------------------------------------------


def test_components_satisfy_the_protocol():
    assert isinstance(AttnLRP(), Attributor) and isinstance(CPLRP(), Attributor)
    assert (AttnLRP.needs_grad, AttnLRP.conserves_relevance) == (True, False)
    assert (CPLRP.needs_grad, CPLRP.conserves_relevance) == (True, True)
    for bad in ({"gamma": -0.1}, {"gamma": float("nan")}, {"batching": "tiles"}):
        with pytest.raises(pydantic.ValidationError):
            LRPParams(**bad)


@pytest.mark.parametrize("method", [AttnLRP(), CPLRP(), CPLRP(gamma=0.25)], ids=repr)
@pytest.mark.parametrize("token", ["cls", "patch"])
def test_conformance(method, token):
    backbone, sae, x = _vit(seed=2), _sae(seed=2), _images(3, seed=3)
    positions = [0, 0, 0] if token == "cls" else [1 + 2, 1 + 7, 1 + 15]
    target = _active_target(backbone, sae, x, positions)
    out = check_attributor(method, target, x, RunContext(batch_size=2))
    assert out.pixels.shape == (3, 32, 32)
    assert set(out.info) == {"z", "absorbed", "absorbed_sae", "conservation_error"}


def test_one_forward_and_one_backward_per_chunk(vit):
    backbone, sae, x, target = vit
    counting = CountingBackbone(backbone)
    rows = TargetFunction(counting, sae, LAYER, target.latents, target.positions)
    CPLRP().attribute(rows, x, RunContext(batch_size=3))
    assert counting.calls == [3, 1]


# --- conservation ------------------------------------------------------------------------------------------

VARIANTS = {
    "class token": {},
    "registers, no class token": {"class_token": False, "global_pool": "avg", "reg_tokens": 2},
    "position embedding without prefix": {"no_embed_class": True, "reg_tokens": 1},
    "qk-norm and layer scale": {"qk_norm": True, "init_values": 0.5},
    "patch size 4": {"patch": 4},
}


@pytest.mark.parametrize("variant", list(VARIANTS), ids=str)
@pytest.mark.parametrize("gamma", [0.0, 0.5], ids=lambda g: f"gamma={g}")
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "explicit"])
def test_cp_lrp_conserves_relevance_in_float64(variant, gamma, fused):
    backbone = _vit(seed=4, **VARIANTS[variant]).to(dtype=torch.float64)
    if not fused:
        _explicit_attention(backbone)
    sae, x = _sae(seed=4, dtype=torch.float64), _images(3, seed=5, dtype=torch.float64)
    prefix = len(backbone.prefix_tokens)
    target = _active_target(backbone, sae, x, [0, prefix + 3, prefix])
    out = CPLRP(gamma=gamma).attribute(target, x, RunContext(batch_size=3))

    z = target(x).detach()
    torch.testing.assert_close(out.info["z"], z)
    total = out.heatmap.sum((1, 2)) + out.info["absorbed"]
    torch.testing.assert_close(total, z, rtol=1e-10, atol=1e-12)
    assert out.info["conservation_error"].abs().max() < 1e-10
    # Biases and embeddings take a real share, so the check above is not about a negligible term.
    assert (out.info["absorbed"].abs() > 1e-3 * z.abs()).all()


def test_the_sae_part_absorbed_is_the_encoder_bias_relevance(vit):
    backbone, sae, x, target = vit
    out = CPLRP().attribute(target, x, RunContext(batch_size=4))
    w, b_e = sae.W_e[target.latents], sae.b_e[target.latents]
    # LRP-0 on z = relu(w . (h - b_d) + b_e): the biases together take (b_e - w . b_d) where z > 0.
    expected = (b_e - w @ sae.b_d) * (out.info["z"] > 0)
    torch.testing.assert_close(out.info["absorbed_sae"], expected, rtol=1e-4, atol=1e-6)


def _explicit_attention(backbone: TimmViT) -> TimmViT:
    for module in backbone.model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    return backbone


@pytest.mark.parametrize("variant", ["class token", "qk-norm and layer scale"], ids=str)
def test_attnlrp_misses_conservation_by_exactly_the_softmax_term(variant):
    # With qk-norm the factors of q and k stay after the norms, whose biases' relevance is then measured
    # with the scaled gradient: another scaling would show up here as a different error.
    backbone = _explicit_attention(_vit(seed=6, **VARIANTS[variant]).to(dtype=torch.float64))
    sae, x = _sae(seed=6, dtype=torch.float64), _images(6, seed=7, dtype=torch.float64)
    target = _active_target(backbone, sae, x, [0, 3, 0, 9, 0, 16])
    error = AttnLRP().attribute(target, x, RunContext(batch_size=6)).info["conservation_error"]

    # The same pass with the attention weights s recorded. Every other op conserves relevance, so the error
    # is what the softmax's gradient x input does not pass on, halved by the uniform rule on q @ k^T:
    # (sum s * g - sum a * grad_a) / 2 with a = log s (a shift of a per row leaves the sum unchanged).
    recorded = []
    drops = [block.attn.attn_drop for block in backbone.model.blocks[: LAYER + 1]]
    with lrp_rules(backbone.model, LAYER, "attnlrp") as probe:
        for drop in drops:
            vars(drop)["forward"] = lambda s: recorded.append(s) or s
        try:
            probe.tensor = torch.zeros(len(x), dtype=x.dtype, requires_grad=True)
            grads = torch.autograd.grad(target(x.clone().requires_grad_(True)).sum(), recorded)
        finally:
            for drop in drops:
                del vars(drop)["forward"]
    missed = torch.zeros(len(x), dtype=x.dtype)
    for s, g in zip(recorded, grads):
        into_softmax = torch.xlogy(s, s) * (g - (s * g).sum(-1, keepdim=True))
        missed += ((s * g).flatten(1).sum(1) - into_softmax.flatten(1).sum(1)) / 2
    torch.testing.assert_close(error, missed, rtol=1e-9, atol=1e-12)
    assert (error.abs() / target(x).detach().abs()).max() > 1e-2  # a real deviation, not rounding


@pytest.mark.parametrize("variant", ["class token", "registers, no class token", "position embedding without prefix"])
@pytest.mark.parametrize("rule", ["attnlrp", "cp_lrp"])
def test_the_relevance_budget_accounts_for_all_of_z(variant, rule):
    # The budget measures each part apart (the residual stream's relevance at every block, one probe per
    # sub-module, the softmax's term from the attention weights, the embedding's parameters times their
    # gradient): the parts sum to z, each block loses nothing else, and they agree with the attributor's own
    # totals, which it records on one probe.
    from cafe_attnlrp.budget import relevance_budget

    backbone = _vit(seed=8, **VARIANTS[variant]).to(dtype=torch.float64)
    sae, x = _sae(seed=8, dtype=torch.float64), _images(4, seed=9, dtype=torch.float64)
    prefix = len(backbone.prefix_tokens)
    target = _active_target(backbone, sae, x, [prefix, prefix + 3, prefix + 7, prefix + 11])
    budget = relevance_budget(target, x, rule)
    out = (AttnLRP() if rule == "attnlrp" else CPLRP()).attribute(target, x, RunContext(batch_size=4))
    z = target(x).detach()
    scale = z.abs()

    torch.testing.assert_close(budget["z"], z)
    torch.testing.assert_close(budget["total"], z, rtol=1e-10, atol=1e-12)
    for name in (n for n in budget if n.endswith("residual")):
        assert (budget[name].abs() < 1e-10 * scale).all(), name
    torch.testing.assert_close(budget["input"], out.heatmap.sum((1, 2)), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(budget["sae_biases"], out.info["absorbed_sae"], rtol=1e-10, atol=1e-12)
    softmax = sum(budget[f"block{b}.softmax"] for b in range(LAYER + 1))
    torch.testing.assert_close(softmax, out.info["conservation_error"], rtol=1e-9, atol=1e-12)
    absorbed = budget["total"] - budget["input"] - softmax
    torch.testing.assert_close(absorbed, out.info["absorbed"], rtol=1e-9, atol=1e-12)
    if rule == "attnlrp":
        assert (softmax.abs() > 1e-3 * scale).all()  # a real loss, which the budget places in the softmaxes
    else:
        assert softmax.abs().max() == 0
    # Every kind of constant takes a share here (random weights), so none of the checks above is vacuous.
    for name in ("patch_embed_bias", "pos_embed", "block0.norm_biases", "block0.attention_biases", "block0.mlp_biases"):
        assert (budget[name].abs() > 1e-6 * scale).all(), name


def test_attnlrp_deviation_is_small_with_timm_initialisation():
    kwargs = {"patch_size": 8, "depth": 3, "embed_dim": WIDTH, "num_heads": 2}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        backbone = TimmViT("vit_tiny_patch16_224", img_size=32, model_kwargs=kwargs).to(dtype=torch.float64)
    sae, x = _sae(seed=6, dtype=torch.float64), _images(8, seed=7, dtype=torch.float64)
    target = _active_target(backbone, sae, x, [0, 3, 0, 9, 0, 16, 5, 0])
    info = AttnLRP().attribute(target, x, RunContext(batch_size=8)).info
    assert (info["conservation_error"].abs() / info["z"].abs()).max() < 0.05


@pytest.mark.parametrize("method", [AttnLRP(), CPLRP(gamma=0.5)], ids=repr)
def test_fused_and_explicit_attention_give_the_same_map(method):
    sae, x = _sae(seed=3, dtype=torch.float64), _images(2, seed=3, dtype=torch.float64)
    fused = _vit(seed=3).to(dtype=torch.float64)
    explicit = _explicit_attention(_vit(seed=3).to(dtype=torch.float64))
    target = _active_target(fused, sae, x, [0, 7])
    maps = [
        method.attribute(TargetFunction(b, sae, LAYER, target.latents, target.positions), x, RunContext()).heatmap
        for b in (fused, explicit)
    ]
    torch.testing.assert_close(maps[0], maps[1], rtol=1e-9, atol=1e-12)


# --- the maps ----------------------------------------------------------------------------------------------


def test_the_methods_differ_from_gradient_x_input_and_from_each_other(vit):
    backbone, sae, x, target = vit
    context = RunContext(batch_size=4)
    maps = {
        name: method.attribute(target, x, context).heatmap
        for name, method in [("gxi", GradientXInput()), ("attnlrp", AttnLRP()), ("cp", CPLRP())]
    }
    for a, b in [("gxi", "attnlrp"), ("gxi", "cp"), ("attnlrp", "cp")]:
        difference = (maps[a] - maps[b]).flatten(1).norm(dim=1) / maps[a].flatten(1).norm(dim=1)
        assert (difference > 1e-2).all(), (a, b, difference)


def test_gamma_changes_the_map(vit):
    backbone, sae, x, target = vit
    plain = CPLRP().attribute(target, x, RunContext()).heatmap
    smoothed = CPLRP(gamma=1.0).attribute(target, x, RunContext()).heatmap
    assert not torch.allclose(plain, smoothed, rtol=1e-2, atol=1e-4)


def test_gamma_rule_conserves_the_relevance_of_one_linear_layer():
    g = torch.Generator().manual_seed(8)
    weight, bias = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    x = torch.randn(3, 4, 7, generator=g, dtype=torch.float64).requires_grad_(True)
    probe = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    out = gamma_linear(x, weight, bias, 0.5, probe)
    torch.testing.assert_close(out, torch.nn.functional.linear(x, weight, bias), rtol=0, atol=0)
    upstream = torch.randn(out.shape, generator=g, dtype=torch.float64)
    grad_x, grad_probe = torch.autograd.grad(out, [x, probe], upstream)
    into = (out * upstream).flatten(1).sum(1)
    torch.testing.assert_close((x * grad_x).flatten(1).sum(1) + grad_probe, into.detach(), rtol=1e-12, atol=1e-12)
    (plain,) = torch.autograd.grad(gamma_linear(x, weight, bias, 0.0), x, upstream)
    torch.testing.assert_close(plain, upstream @ weight)


# --- the patches -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["attnlrp", "cp_lrp"])
@pytest.mark.parametrize("gamma", [0.0, 0.5], ids=lambda g: f"gamma={g}")
def test_the_patched_model_computes_the_same_values(vit, attention, gamma):
    backbone, sae, x, target = vit
    with torch.no_grad():
        before = target(x)
        logits = backbone.model(x)
    with lrp_rules(backbone.model, LAYER, attention, gamma) as probe, torch.no_grad():
        torch.testing.assert_close(target(x), before, rtol=0, atol=0)
        probe.tensor = torch.zeros(len(x), requires_grad=True)
        torch.testing.assert_close(target(x), before, rtol=0, atol=0)
    with lrp_rules(backbone.model, backbone.depth - 1, attention, gamma):
        with torch.no_grad():
            torch.testing.assert_close(backbone.model(x), logits, rtol=0, atol=0)


def test_patches_are_per_instance_and_removed_on_exit(vit):
    backbone, *_ = vit
    other = _vit(seed=0)
    classes = {type(m): getattr(type(m), "forward") for m in backbone.model.modules()}
    before = snapshot(backbone.model)
    with lrp_rules(backbone.model, LAYER, "attnlrp"):
        patched = [name for name, m in backbone.model.named_modules() if "forward" in vars(m)]
        assert "blocks.0.norm1" in patched and "blocks.1.attn" in patched and "blocks.1.mlp.act" in patched
        assert "blocks.2.attn" not in patched  # block 2 does not run for layer 1
        assert "_pos_embed" in vars(backbone.model)
        assert all(getattr(cls, "forward") is forward for cls, forward in classes.items())
        assert not any("forward" in vars(m) for m in other.model.modules())
    assert before.differences(snapshot(backbone.model)) == []


class _FailingSAE(torch.nn.Module):
    """Runs the real SAE's encoder, then raises: the failure comes after the patched trunk has run."""

    def __init__(self, sae):
        super().__init__()
        self.sae, self.d_in, self.d_sae, self.layer, self.site = sae, sae.d_in, sae.d_sae, sae.layer, sae.site

    def encode_latents(self, h, latents):
        self.sae.encode_latents(h, latents)
        raise RuntimeError("injected failure")


class _FailingBackbone(CountingBackbone):
    """Runs the patched block 0, then raises before block 1."""

    def forward_to(self, x, layer):
        self.inner.forward_to(x, 0)
        raise RuntimeError("injected failure")


@pytest.mark.parametrize("where", ["trunk", "sae"])
def test_patches_are_removed_when_the_call_raises(vit, where):
    backbone, sae, x, target = vit
    if where == "sae":
        failing = TargetFunction(backbone, _FailingSAE(sae), LAYER, target.latents, target.positions)
    else:
        failing = TargetFunction(_FailingBackbone(backbone), sae, LAYER, target.latents, target.positions)
    with torch.no_grad():
        z = target(x)
    for method in (AttnLRP(), CPLRP(gamma=0.5)):
        before = snapshot(backbone.model)
        with pytest.raises(RuntimeError, match="injected failure"):
            method.attribute(failing, x, RunContext(batch_size=2))
        assert before.differences(snapshot(backbone.model)) == []
        assert not any("forward" in vars(m) for m in backbone.model.modules())
        assert "_pos_embed" not in vars(backbone.model)
        with torch.no_grad():
            torch.testing.assert_close(target(x), z, rtol=0, atol=0)
    CPLRP().attribute(target, x, RunContext())  # and the model can be patched again


def test_an_instance_override_present_before_is_restored(vit):
    backbone, *_ = vit
    norm = backbone.model.blocks[0].norm1
    own = norm.forward  # a bound method stored on the instance, as some tools do
    norm.forward = own
    try:
        with lrp_rules(backbone.model, LAYER, "cp_lrp"):
            assert vars(norm)["forward"] is not own
        assert vars(norm)["forward"] is own
    finally:
        del norm.forward


def test_rules_cannot_be_nested_on_one_model(vit):
    backbone, *_ = vit
    with lrp_rules(backbone.model, LAYER, "attnlrp"):
        with pytest.raises(RuntimeError, match="nested"):
            with lrp_rules(backbone.model, LAYER, "cp_lrp"):
                pass
        assert "forward" in vars(backbone.model.blocks[0].norm1)
    with lrp_rules(backbone.model, LAYER, "cp_lrp"):
        pass


def _gated_vit() -> TimmViT:
    from timm.layers import SwiGLUPacked

    return _vit(mlp_layer=SwiGLUPacked, mlp_ratio=2.0)


def _resnet() -> TimmConvNet:
    return TimmConvNet("resnet18", img_size=32, model_kwargs={"channels": (8, 16, 16, 16), "layers": (1, 1, 1, 1)})


def test_unsupported_models_are_rejected_without_leaving_patches():
    linear = patch_sum_backbone()
    sae = _sae()
    with pytest.raises(UnsupportedModelError, match="VisionTransformer"):
        CPLRP().attribute(TargetFunction(linear, sae, 0, [0], [0]), torch.rand(1, 3, 8, 8), RunContext())

    gated = _gated_vit()
    before = snapshot(gated.model)
    with pytest.raises(UnsupportedModelError, match="GluMlp|SwiGLU"):
        AttnLRP().attribute(TargetFunction(gated, sae, LAYER, [0], [0]), _images(1), RunContext())
    assert before.differences(snapshot(gated.model)) == []


@pytest.mark.parametrize("method", [AttnLRP(), CPLRP()], ids=repr)
def test_compatibility_is_checked_before_any_image(vit, method):
    backbone, *_ = vit
    assert method.check_compatible(backbone) == []

    (problem,) = method.check_compatible(_resnet())
    assert problem.startswith(f"{method.attention_rule} has LRP rules for timm VisionTransformer blocks only")
    assert "ResNet (timm.models.resnet)" in problem and "gradient_x_input" in problem

    gated = _gated_vit()
    before = snapshot(gated.model)
    (problem,) = method.check_compatible(gated)
    assert f"blocks 0..{gated.depth - 1}" in problem
    assert [f"blocks.{i}.mlp (GluMlp)" in problem for i in range(gated.depth)] == [True] * gated.depth
    assert before.differences(snapshot(gated.model)) == []


def test_only_the_blocks_up_to_the_saes_layer_must_have_rules():
    mixed = _vit()
    last = mixed.depth - 1
    gated_block = _gated_vit().model.blocks[last]
    mixed.model.blocks[last] = gated_block  # only the last block has an MLP without a rule
    early, late = _sae(), ReluSAE.random_init(WIDTH, D_SAE, seed=1, layer=last)
    assert CPLRP().check_compatible(mixed, [early]) == []
    (problem,) = CPLRP().check_compatible(mixed, [early, late])
    assert f"blocks.{last}.mlp (GluMlp)" in problem and "blocks.0." not in problem


def test_the_runtime_error_is_the_problem_the_check_reports():
    gated = _gated_vit()
    last = gated.depth - 1
    (problem,) = CPLRP().check_compatible(gated)
    target = TargetFunction(gated, _sae(), last, [0], [0])
    with pytest.raises(IncompatibleComponentError) as raised:
        CPLRP().attribute(target, _images(1), RunContext())
    assert str(raised.value) == problem


# --- agreement with LXT ------------------------------------------------------------------------------------

# LXT's rules for torchvision's ViT patch torch.nn classes globally, so they run in a separate interpreter.
LXT_REFERENCE = textwrap.dedent(
    '''
    import sys
    import torch
    import torch.nn.functional as F
    from torchvision.models import vision_transformer

    import lxt.efficient
    from lxt.efficient.patches import layer_norm_forward
    from lxt.efficient.rules import divide_gradient, identity_rule_implicit, identity_rule_implicit_fn

    data = torch.load(sys.argv[1])
    model = vision_transformer.VisionTransformer(**data["config"]).double().eval()
    model.load_state_dict(data["state"])
    x, w, b_e, b_d, positions = data["x"], data["w"], data["b_e"], data["b_d"], data["positions"]

    def embed(images):
        h = model._process_input(images)
        h = torch.cat([model.class_token.expand(len(images), -1, -1), h], dim=1)
        return model.encoder.dropout(h + model.encoder.pos_embedding)

    def tokens(images):
        return model.encoder.layers(embed(images))

    def attnlrp_tokens(images):
        # The same blocks written out, with LXT's AttnLRP rules where LXT places them.
        h = embed(images)
        for block in model.encoder.layers:
            attention = block.self_attention
            heads = attention.num_heads
            a = layer_norm_forward(block.ln_1, h)
            q, k, v = F.linear(a, attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1)
            q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
            q, k, v = divide_gradient(q, 4), divide_gradient(k, 4), divide_gradient(v, 2)
            scores = (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5
            mixed = (scores.softmax(dim=-1) @ v).transpose(1, 2).flatten(2)
            h = h + attention.out_proj(mixed)
            m = block.mlp[0](layer_norm_forward(block.ln_2, h))
            h = h + block.mlp[3](identity_rule_implicit(block.mlp[1], m))
        return h

    def relevance(token_fn):
        leaf = x.clone().requires_grad_(True)
        h = token_fn(leaf)[torch.arange(len(x)), positions]
        z = torch.relu(((h - b_d) * w).sum(-1) + b_e)
        (grad,) = torch.autograd.grad(z.sum(), leaf)
        return (leaf * grad).sum(1).detach(), z.detach()

    out = {}
    with torch.no_grad():
        out["tokens"] = tokens(x)
        out["attnlrp_tokens"] = attnlrp_tokens(x)
        out["logits"] = model(x)
    out["gradient"], out["z"] = relevance(tokens)

    # Each map also with the 1e-10 stabiliser of LXT's identity rule set to zero, as the plugin has none.
    stabiliser = identity_rule_implicit_fn.forward.__defaults__
    out["attnlrp"], _ = relevance(attnlrp_tokens)
    identity_rule_implicit_fn.forward.__defaults__ = (0.0,)
    out["attnlrp_unstabilised"], _ = relevance(attnlrp_tokens)
    identity_rule_implicit_fn.forward.__defaults__ = stabiliser

    lxt.efficient.monkey_patch(vision_transformer)
    out["cp_lrp"], out["z_patched"] = relevance(tokens)
    identity_rule_implicit_fn.forward.__defaults__ = (0.0,)
    out["cp_lrp_unstabilised"], _ = relevance(tokens)

    from lxt.efficient import monkey_patch_zennit
    from zennit.rules import Gamma

    monkey_patch_zennit()
    linear, (lx, upstream) = torch.nn.Linear(7, 5).double(), data["gamma_case"]
    with torch.no_grad():
        linear.weight.copy_(data["gamma_weight"])
        linear.bias.copy_(data["gamma_bias"])
    Gamma(gamma=0.5).register(linear)
    leaf = lx.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(linear(leaf), leaf, upstream)
    out["gamma_relevance"] = (leaf * grad).detach()
    torch.save(out, sys.argv[2])
    '''
)

TORCHVISION_TO_TIMM = {
    "class_token": "cls_token",
    "conv_proj": "patch_embed.proj",
    "encoder.pos_embedding": "pos_embed",
    "encoder.ln": "norm",
    "heads.head": "head",
    "ln_1": "norm1",
    "ln_2": "norm2",
    "self_attention.in_proj_weight": "attn.qkv.weight",
    "self_attention.in_proj_bias": "attn.qkv.bias",
    "self_attention.out_proj": "attn.proj",
    "mlp.0": "mlp.fc1",
    "mlp.3": "mlp.fc2",
}


def _timm_name(name: str) -> str:
    name = name.replace("encoder.layers.encoder_layer_", "blocks.")
    for old, new in TORCHVISION_TO_TIMM.items():
        name = name.replace(old, new)
    return name


@pytest.fixture(scope="module")
def lxt_reference(tmp_path_factory):
    from torchvision.models import vision_transformer

    config = {"image_size": 32, "patch_size": 8, "num_layers": 2, "num_heads": 2, "hidden_dim": 32, "mlp_dim": 64}
    config["num_classes"] = 10
    reference = vision_transformer.VisionTransformer(**config).double().eval()
    _randomise(reference, seed=9)

    kwargs = {"patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2.0, "num_classes": 10}
    backbone = TimmViT("vit_tiny_patch16_224", img_size=32, model_kwargs=kwargs).to(dtype=torch.float64)
    mapped = {_timm_name(k): v for k, v in reference.state_dict().items()}
    assert set(mapped) == set(backbone.model.state_dict())
    backbone.model.load_state_dict(mapped)
    eps = {m.eps for m in reference.modules() if isinstance(m, torch.nn.LayerNorm)}
    assert eps == {m.eps for m in backbone.model.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-6}

    sae = _sae(seed=9, dtype=torch.float64)
    x = _images(3, seed=10, dtype=torch.float64)
    target = _active_target(backbone, sae, x, [0, 6, 0])
    g = torch.Generator().manual_seed(11)
    data = {
        "config": config,
        "state": reference.state_dict(),
        "x": x,
        "w": sae.W_e[target.latents].detach(),
        "b_e": sae.b_e[target.latents].detach(),
        "b_d": sae.b_d.detach(),
        "positions": target.positions,
        "gamma_weight": torch.randn(5, 7, generator=g, dtype=torch.float64),
        "gamma_bias": torch.randn(5, generator=g, dtype=torch.float64),
        "gamma_case": (
            torch.randn(2, 3, 7, generator=g, dtype=torch.float64),
            torch.randn(2, 3, 5, generator=g, dtype=torch.float64),
        ),
    }
    folder = tmp_path_factory.mktemp("lxt")
    torch.save(data, folder / "in.pt")
    subprocess.run([sys.executable, "-c", LXT_REFERENCE, str(folder / "in.pt"), str(folder / "out.pt")], check=True)
    return backbone, target, x, data, torch.load(folder / "out.pt")


def test_the_timm_copy_computes_what_torchvision_computes(lxt_reference):
    backbone, target, x, _, ref = lxt_reference
    with torch.no_grad():
        torch.testing.assert_close(backbone.forward_to(x, 1), ref["tokens"], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(backbone.model(x), ref["logits"], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(target(x), ref["z"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ref["attnlrp_tokens"], ref["tokens"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ref["z_patched"], ref["z"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["cp_lrp", "attnlrp"])
def test_relevance_equals_lxt(lxt_reference, method):
    backbone, target, x, _, ref = lxt_reference
    attributor = CPLRP() if method == "cp_lrp" else AttnLRP()
    out = attributor.attribute(target, x, RunContext(batch_size=3))
    scale = ref[method].abs().max()
    torch.testing.assert_close(out.pixels, ref[method], rtol=1e-7, atol=1e-8 * scale)
    torch.testing.assert_close(out.pixels, ref[f"{method}_unstabilised"], rtol=1e-12, atol=1e-14 * scale)
    # LXT's rules really change the map: the agreement is not that of two plain gradients.
    assert (out.pixels - ref["gradient"]).abs().max() > 1e-2 * scale


def test_gamma_rule_equals_zennit_with_lxt(lxt_reference):
    *_, data, ref = lxt_reference
    x, upstream = data["gamma_case"]
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(gamma_linear(leaf, data["gamma_weight"], data["gamma_bias"], 0.5), leaf, upstream)
    # zennit adds a 1e-6 stabiliser to each denominator; this rule needs none.
    torch.testing.assert_close(leaf.detach() * grad, ref["gamma_relevance"], rtol=1e-5, atol=1e-7)


# --- the plugin --------------------------------------------------------------------------------------------


def test_registration_and_the_attributor_import_no_heavy_library():
    code = (
        "import sys, cafe_attnlrp.plugin;"
        "heavy = {'lxt', 'transformers', 'timm', 'cafe_attnlrp.attributor'} & set(sys.modules);"
        "assert not heavy, heavy;"
        "import cafe_attnlrp.attributor;"
        "assert not {'lxt', 'transformers'} & set(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.filterwarnings("ignore:cafe plugin:RuntimeWarning")
def test_attributors_are_discovered_through_entry_points():
    registry = PluginHost().registry("attributor")
    assert isinstance(registry.get("attnlrp").build({}), AttnLRP)
    assert registry.get("cp_lrp").build({"gamma": 0.25}).gamma == 0.25
    assert type(registry.get("cp_lrp").build({})) is CPLRP
    for name, bad in [("attnlrp", {"gamma": -1.0}), ("cp_lrp", {"gamma": float("inf")}), ("attnlrp", {"gama": 0.1})]:
        with pytest.raises(pydantic.ValidationError):
            registry.get(name).build(bad)


# -- the fast forms of the LayerNorm and GELU rules ---------------------------------------------------------


def test_layer_norm_rule_gradient_equals_the_detached_std_surrogate():
    from cafe_attnlrp.rules import layer_norm_rule

    norm = torch.nn.LayerNorm(8, eps=1e-6).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(3, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    cotangent = torch.randn(3, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = layer_norm_rule(norm, x, (-1,), norm.weight, norm.eps)
    assert torch.equal(out, norm(x))
    (fast,) = torch.autograd.grad(out, x, cotangent)
    mean = x.mean(-1, keepdim=True)
    std = ((x - mean) ** 2).mean(-1, keepdim=True).add(norm.eps).sqrt()
    surrogate = (x - mean) / std.detach() * norm.weight + norm.bias
    (reference,) = torch.autograd.grad(surrogate, x, cotangent)
    torch.testing.assert_close(fast, reference, rtol=1e-12, atol=1e-12)


def test_gelu_identity_rule_uses_the_normal_cdf_and_matches_the_general_ratio():
    from cafe_attnlrp.rules import identity_rule

    gelu = torch.nn.GELU()
    x = torch.tensor([-3.0, -0.5, 0.0, 0.5, 3.0], dtype=torch.float64, requires_grad=True)
    (fast,) = torch.autograd.grad(identity_rule(gelu.forward, x), x, torch.ones_like(x))
    (general,) = torch.autograd.grad(identity_rule(lambda t: gelu(t), x), x, torch.ones_like(x))
    nonzero = x.detach() != 0
    torch.testing.assert_close(fast[nonzero], general[nonzero], rtol=1e-12, atol=1e-12)
    assert fast[2].item() == 0.5  # the normal CDF at 0; relevance x * grad there is 0 either way


# -- the fused forms of the rules and the plan cache ----------------------------------------------------------


def _double(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("mask", ["none", "bool", "float", "causal"])
def test_value_attention_holds_the_weights_constant(mask):
    from cafe_attnlrp.rules import add_mask, value_attention

    q, k, v, cotangent = (_double(2, 3, 5, 4, seed=i) for i in range(4))
    attn_mask = {"none": None, "bool": _double(5, 5, seed=5) > -0.5, "float": _double(5, 5, seed=6)}.get(mask)
    attn_mask = None if attn_mask is None else attn_mask.fill_diagonal_(True if mask == "bool" else 0.0)
    causal = mask == "causal"
    v = v.requires_grad_(True)
    out = value_attention(q, k, v, attn_mask, causal)
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal)
    assert torch.equal(out, reference)
    (grad,) = torch.autograd.grad(out, v, cotangent)
    weights = add_mask(q @ k.transpose(-2, -1) / 2.0, attn_mask, causal).softmax(-1)
    (expected,) = torch.autograd.grad(weights.detach() @ v, v, cotangent)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 0.5], ids=lambda g: f"gamma={g}")
def test_a_channel_factor_of_the_linear_rule_scales_its_incoming_gradient(gamma):
    weight, bias, factor = _double(5, 7, seed=0), _double(5, seed=1), _double(5, seed=2).abs()
    x, upstream = _double(3, 4, 7, seed=3).requires_grad_(True), _double(3, 4, 5, seed=4)
    probe = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    grads = torch.autograd.grad(gamma_linear(x, weight, bias, gamma, probe, factor), [x, probe], upstream)
    expected = torch.autograd.grad(gamma_linear(x, weight, bias, gamma, probe), [x, probe], upstream * factor)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    if gamma == 0:
        torch.testing.assert_close(grads[1], ((upstream * factor) * bias).sum((1, 2)), rtol=1e-12, atol=1e-12)


def test_the_linear_rule_gives_parameters_that_require_grad_their_plain_gradient():
    linear = torch.nn.Linear(7, 5).double()
    x, upstream = _double(3, 4, 7, seed=0), _double(3, 4, 5, seed=1)
    probe = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    out = gamma_linear(x, linear.weight, linear.bias, 0.0, probe)
    got = torch.autograd.grad(out, [linear.weight, linear.bias], upstream)
    expected = torch.autograd.grad(linear(x), [linear.weight, linear.bias], upstream)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_the_rules_record_the_relevance_of_the_constant_they_are_given():
    from cafe_attnlrp.rules import identity_rule, layer_norm_rule

    norm = torch.nn.LayerNorm(8).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x, upstream = _double(3, 5, 8, seed=0).requires_grad_(True), _double(3, 5, 8, seed=1)
    probe = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    # The plain LayerNorm op run by the rule itself (fn=None) gives the module's value and the same gradient.
    out = layer_norm_rule(None, x, (-1,), norm.weight, norm.eps, norm.bias, probe)
    assert torch.equal(out, norm(x))
    grad_x, grad_probe = torch.autograd.grad(out, [x, probe], upstream)
    (reference,) = torch.autograd.grad(layer_norm_rule(norm, x, (-1,), norm.weight, norm.eps), x, upstream)
    torch.testing.assert_close(grad_x, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_probe, (upstream * norm.bias).sum((1, 2)), rtol=1e-12, atol=1e-12)

    constant = _double(8, seed=2)
    out = identity_rule(torch.nn.GELU().forward, x, constant, probe)
    grad_x, grad_probe = torch.autograd.grad(out, [x, probe], upstream)
    torch.testing.assert_close(grad_probe, (grad_x * constant).sum((1, 2)), rtol=1e-12, atol=1e-12)


def test_a_changed_model_is_planned_again(vit):
    backbone, sae, x, target = vit
    block = backbone.model.blocks[0]
    with lrp_rules(backbone.model, LAYER, "cp_lrp"):
        pass
    proj, act = block.attn.proj, block.mlp.act
    try:
        block.attn.proj = torch.nn.Linear(WIDTH, WIDTH)
        with lrp_rules(backbone.model, LAYER, "cp_lrp"):
            assert "forward" in vars(block.attn.proj)
        block.mlp.act = torch.nn.ReLU(inplace=True)
        with pytest.raises(UnsupportedModelError, match="in-place ReLU"):
            with lrp_rules(backbone.model, LAYER, "cp_lrp"):
                pass
    finally:
        block.attn.proj, block.mlp.act = proj, act
    assert not any("forward" in vars(m) for m in backbone.model.modules())


@pytest.mark.parametrize(
    "method, variant",
    [(CPLRP(gamma=0.5), "class token"), (AttnLRP(gamma=0.5), "class token"), (AttnLRP(), "qk-norm and layer scale")],
    ids=str,
)
def test_batched_backward_passes_give_the_same_maps(method, variant):
    backbone, sae = _vit(seed=5, **VARIANTS[variant]), _sae(seed=5)
    image = _images(1, seed=6)
    prefix = len(backbone.prefix_tokens)
    target = _active_target(backbone, sae, image.expand(3, -1, -1, -1), [0, prefix + 2, prefix + 9])
    x = image.expand(3, -1, -1, -1).contiguous()
    maps = {}
    for batching in ("rows", "shared"):
        attributor = type(method)(gamma=method.gamma, batching=batching)
        maps[batching] = attributor.attribute(target, x, RunContext(batch_size=3))
    torch.testing.assert_close(maps["shared"].pixels, maps["rows"].pixels, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(maps["shared"].info["absorbed"], maps["rows"].info["absorbed"], rtol=1e-4, atol=1e-6)
