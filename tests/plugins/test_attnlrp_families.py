"""AttnLRP and CP-LRP on open_clip and Hugging Face CLIP, DINOv2, SigLIP and ViT.

The reference maps are computed on the libraries' own modules: their LayerNorms, activations (QuickGELU,
exact and tanh GELU), layer scales, separate or fused q/k/v projections, ``nn.MultiheadAttention`` and
SigLIP's attention-pooling head are patched here, per instance, with the rules written out as plain
autograd (the standard deviation detached, ``x * (act(x) / x).detach()``, gradients of q and k divided by
4 and of v by 2 or q and k detached), and the relevance is gradient x input. cafe computes its maps on the
timm ViT the backbone converted the model into.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from cafe_attnlrp.attributor import AttnLRP, CPLRP  # noqa: E402
from cafe_core.protocols import RunContext, TargetFunction  # noqa: E402
from cafe_core.testing import check_attributor  # noqa: E402
from cafe_sae import ReluSAE  # noqa: E402
from cafe_timm.hf_vit import HFVisionViT  # noqa: E402
from cafe_timm.open_clip_vit import OpenClipViT  # noqa: E402
from cafe_timm.tiny import HF_FAMILIES, save_hf, save_open_clip  # noqa: E402
from cafe_timm.vit import TimmViT  # noqa: E402

pytestmark = pytest.mark.slow

F64 = torch.float64
LAYER, D_SAE = 2, 64
# Each family at its checkpoint's own size, where no position embedding is interpolated.
SIZES = {"clip": 32, "dinov2": 48, "dinov2_registers": 48, "siglip": 32, "vit": 32, "open_clip": 32}
OPEN_CLIP = ("openai", "layer_scale", "no_ln_pre")
FAMILIES = [f"hf:{f}" for f in HF_FAMILIES] + [f"open_clip:{v}" for v in OPEN_CLIP]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("lrp_families")
    names = {f"hf:{f}": save_hf(root / f, f, seed=10 + i) for i, f in enumerate(HF_FAMILIES)}
    names.update({f"open_clip:{v}": save_open_clip(root / v, v, seed=20 + i) for i, v in enumerate(OPEN_CLIP)})
    return names


def _size(family: str) -> int:
    library, name = family.split(":")
    return SIZES[name if library == "hf" else "open_clip"]


def _backbone(saved, family: str, **kwargs) -> TimmViT:
    library, name = family.split(":")
    if library == "hf":
        backbone = HFVisionViT(path=saved[family], img_size=_size(family), **kwargs)
    else:
        backbone = OpenClipViT(path=saved[family], **kwargs)
    return backbone.to(dtype=F64)


def _sae(width: int = 32, seed: int = 0) -> ReluSAE:
    sae = ReluSAE.random_init(width, D_SAE, seed=seed, layer=LAYER).to(dtype=F64)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        sae.b_e.copy_(0.3 * torch.randn(D_SAE, generator=g, dtype=F64))
        sae.b_d.copy_(0.3 * torch.randn(width, generator=g, dtype=F64))
    return sae.requires_grad_(False)


def _images(n: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _target(backbone, sae, x, positions) -> TargetFunction:
    """Row ``i`` explains the latent most active at token ``positions[i]`` of image ``i``."""
    with torch.no_grad():
        codes = sae.encode(backbone.forward_to(x, LAYER))
    latents = codes[torch.arange(len(x)), torch.as_tensor(positions)].argmax(-1)
    target = TargetFunction(backbone, sae, LAYER, latents, positions)
    with torch.no_grad():
        assert (target(x) > 0).all()
    return target


def _positions(backbone) -> list[int]:
    """The first prefix token (class token, register or pool token) if any, and two patch tokens."""
    n = len(backbone.prefix_tokens)
    return [0 if n else 5, n + 3, n + backbone.grid_size[1] + 1]


# --- the rules on the libraries' own modules -------------------------------------------------------------


class _Patches:
    """Instance attributes (submodules or methods) replaced for a while."""

    def __init__(self) -> None:
        self.saved: list[tuple[nn.Module, str, object]] = []

    def set(self, owner: nn.Module, name: str, value: object) -> None:
        self.saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def restore(self) -> None:
        while self.saved:
            owner, name, value = self.saved.pop()
            if name == "forward":
                del owner.forward
            else:
                setattr(owner, name, value)


def _scaled(t: torch.Tensor, rule: str) -> torch.Tensor:
    """q or k under the rule: detached (CP-LRP) or with its gradient divided by 4 (AttnLRP)."""
    return t.detach() if rule == "cp_lrp" else t / 4 + (t - t / 4).detach()


def _halved(t: torch.Tensor, rule: str) -> torch.Tensor:
    """v under the rule: untouched (CP-LRP) or with its gradient halved (AttnLRP)."""
    return t if rule == "cp_lrp" else t / 2 + (t - t / 2).detach()


class _Identity(nn.Module):
    """An element-wise activation with the identity rule."""

    def __init__(self, act) -> None:
        super().__init__()
        self.act = act

    def forward(self, x):
        return x * (self.act(x) / x).detach()


class _Projection(nn.Module):
    def __init__(self, linear: nn.Linear, wrap) -> None:
        super().__init__()
        self.linear, self.wrap = linear, wrap

    def forward(self, x):
        return self.wrap(self.linear(x))


class _MultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` (batch first, no mask) written out with the rule on q, k and v."""

    def __init__(self, mha: nn.MultiheadAttention, rule: str) -> None:
        super().__init__()
        self.mha, self.rule = mha, rule

    def forward(self, query, key, value, need_weights=False, attn_mask=None, **_):
        mha, d = self.mha, self.mha.embed_dim
        w, b = mha.in_proj_weight, mha.in_proj_bias
        q = _scaled(F.linear(query, w[:d], b[:d]), self.rule)
        k = _scaled(F.linear(key, w[d : 2 * d], b[d : 2 * d]), self.rule)
        v = _halved(F.linear(value, w[2 * d :], b[2 * d :]), self.rule)
        heads = lambda t: t.unflatten(-1, (mha.num_heads, -1)).transpose(1, 2)  # noqa: E731
        scores = heads(q) @ heads(k).transpose(-2, -1) / (d // mha.num_heads) ** 0.5
        out = (scores.softmax(-1) @ heads(v)).transpose(1, 2).flatten(2)
        return mha.out_proj(out), None


def _layer_norm_rule(norm: nn.LayerNorm):
    def forward(x):
        centred = x - x.mean(-1, keepdim=True)
        std = (x.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
        return centred / std.detach() * norm.weight + norm.bias

    return forward


def _patch_library(model: nn.Module, rule: str) -> _Patches:
    """Put the rules on every LayerNorm, activation, q/k/v projection and multi-head attention of ``model``."""
    patches = _Patches()
    for module in list(model.modules()):
        if isinstance(module, nn.LayerNorm):
            patches.set(module, "forward", _layer_norm_rule(module))
        for name in ("activation_fn", "activation", "intermediate_act_fn", "gelu"):  # HF MLPs, open_clip's
            act = module._modules.get(name)
            if act is not None:
                patches.set(module, name, _Identity(act))
        for name, wrap in (("q_proj", _scaled), ("k_proj", _scaled), ("v_proj", _halved),
                           ("query", _scaled), ("key", _scaled), ("value", _halved)):
            linear = module._modules.get(name)
            if isinstance(linear, nn.Linear):
                patches.set(module, name, _Projection(linear, lambda t, w=wrap: w(t, rule)))
        for name in ("attn", "attention"):  # open_clip's blocks, SigLIP's pooling head
            mha = module._modules.get(name)
            if isinstance(mha, nn.MultiheadAttention):
                patches.set(module, name, _MultiheadAttention(mha, rule))
    return patches


def _library_tokens(saved, family: str):
    """``x -> tokens [B, T, D]`` at LAYER, computed by the library's own model, in float64."""
    library, name = family.split(":")
    if library == "open_clip":
        visual = open_clip.create_model(f"local-dir:{saved[family]}").visual.to(F64).eval()

        def tokens(x):
            h = visual._embeds(x)
            for block in visual.transformer.resblocks[: LAYER + 1]:
                h = block(h)
            return h

        return visual, tokens
    model = getattr(transformers, HF_FAMILIES[name][1]).from_pretrained(saved[family]).to(F64).eval()

    def tokens(x):
        out = model(pixel_values=x, output_hidden_states=True)
        h = out.hidden_states[LAYER + 1]
        return torch.cat([out.pooler_output[:, None], h], 1) if name == "siglip" else h

    return model, tokens


def _library_relevance(saved, family: str, rule: str, target: TargetFunction, x: torch.Tensor) -> torch.Tensor:
    """Pixel relevance ``[B, H, W]``: gradient x input through the library's model with the rules on it."""
    model, tokens = _library_tokens(saved, family)
    patches = _patch_library(model, rule)
    try:
        leaf = x.clone().requires_grad_(True)
        z = target.from_tokens(tokens(leaf))
        (grad,) = torch.autograd.grad(z.sum(), leaf)
    finally:
        patches.restore()
    return (leaf * grad).sum(1).detach()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", [CPLRP(), AttnLRP()], ids=["cp_lrp", "attnlrp"])
def test_relevance_equals_the_rules_on_the_librarys_own_modules(saved, family, method):
    pool = family == "hf:siglip"  # its head is explained through the pool token
    backbone = _backbone(saved, family, pool_token=pool)
    sae, x = _sae(seed=3), _images(3, _size(family))
    target = _target(backbone, sae, x, _positions(backbone))
    out = method.attribute(target, x, RunContext(batch_size=3))
    expected = _library_relevance(saved, family, method.attention_rule, target, x)
    scale = expected.abs().max()
    # With registers the class token is stored with its position embedding added (in float32, as the
    # library adds them in a float32 run); in float64 that one rounding shows.
    atol = (1e-8 if family == "hf:dinov2_registers" else 1e-10) * scale
    torch.testing.assert_close(out.pixels, expected, rtol=1e-9, atol=atol)
    # The rules change the map: this is not the agreement of two plain gradients.
    leaf = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(target(leaf).sum(), leaf)
    assert ((leaf * plain).sum(1) - expected).abs().max() > 1e-3 * scale


# --- conservation and the two rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "gamma"), [(f, 0.0) for f in FAMILIES] + [("hf:siglip+pool", 0.0), ("hf:siglip+pool", 0.5)]
)
def test_cp_lrp_conserves_relevance_with_biases_counted(saved, family, gamma):
    pool = family.endswith("+pool")
    backbone = _backbone(saved, family.removesuffix("+pool"), pool_token=pool)
    sae, x = _sae(seed=5), _images(3, _size(family.removesuffix("+pool")), seed=6)
    target = _target(backbone, sae, x, _positions(backbone))
    out = CPLRP(gamma=gamma).attribute(target, x, RunContext(batch_size=3))
    z = target(x).detach()
    torch.testing.assert_close(out.heatmap.sum((1, 2)) + out.info["absorbed"], z, rtol=1e-10, atol=1e-12)
    assert (out.info["conservation_error"].abs() / z).max() < 1e-10
    assert (out.info["absorbed"].abs() > 1e-3 * z.abs()).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_attnlrp_equals_cp_lrp_where_no_relevance_passes_the_attention(saved, family):
    # With every attention's output projection zero, the two differ in no rule that relevance meets: the
    # norms, activations, layer scales and MLPs are the same rules in both.
    backbone = _backbone(saved, family)
    with torch.no_grad():
        for block in backbone.model.blocks:
            block.attn.proj.weight.zero_()
            block.attn.proj.bias.zero_()
    sae, x = _sae(seed=7), _images(3, _size(family), seed=8)
    target = _target(backbone, sae, x, _positions(backbone))
    context = RunContext(batch_size=3)
    attn, cp = AttnLRP().attribute(target, x, context), CPLRP().attribute(target, x, context)
    torch.testing.assert_close(attn.pixels, cp.pixels, rtol=1e-12, atol=1e-14 * cp.pixels.abs().max())
    torch.testing.assert_close(attn.info["conservation_error"], torch.zeros(3, dtype=F64), rtol=0, atol=1e-10)


@pytest.mark.parametrize("family", ["hf:siglip", "open_clip:openai"])
def test_conformance_on_a_family(saved, family):
    backbone = _backbone(saved, family, pool_token=family == "hf:siglip").to(dtype=torch.float32)
    sae, x = _sae(seed=9).to(dtype=torch.float32), _images(3, _size(family), seed=9).float()
    target = _target(backbone, sae, x, _positions(backbone))
    check_attributor(CPLRP(), target, x, RunContext(batch_size=2))


# --- the same weights through timm -----------------------------------------------------------------------


def test_open_clip_weights_give_the_same_maps_through_timm(saved):
    family = "open_clip:openai"
    library = _backbone(saved, family)
    checkpoint = f"{saved[family]}/open_clip_pytorch_model.bin"
    kwargs = {"patch_size": 8, "depth": 3, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2.0, "num_classes": 16}
    timm_built = TimmViT("vit_base_patch16_clip_quickgelu_224", checkpoint=checkpoint, img_size=32,
                         model_kwargs=kwargs).to(dtype=F64)
    sae, x = _sae(seed=11), _images(2, 32, seed=12)
    rows = _target(library, sae, x, [0, 7])
    for method in (CPLRP(), AttnLRP()):
        maps = [method.attribute(TargetFunction(b, sae, LAYER, rows.latents, rows.positions), x, RunContext()).heatmap
                for b in (library, timm_built)]
        torch.testing.assert_close(maps[1], maps[0], rtol=1e-10, atol=1e-12 * maps[0].abs().max())


# --- what the rules do not cover -------------------------------------------------------------------------


def test_a_swiglu_dinov2_is_refused_before_any_image_naming_the_module(tmp_path):
    backbone = HFVisionViT(path=save_hf(tmp_path / "giant", "dinov2", use_swiglu_ffn=True), img_size=48)
    sae = ReluSAE.random_init(32, D_SAE, seed=0, layer=1)
    for method in (AttnLRP(), CPLRP()):
        (problem,) = method.check_compatible(backbone, [sae])
        assert "blocks.0.mlp (GluMlp)" in problem and "gradient_x_input" in problem


def test_the_pool_head_is_checked_only_when_the_backbone_runs_it(saved):
    backbone = _backbone(saved, "hf:siglip", pool_token=True)
    assert backbone.trailing_modules(0) == ("norm", "attn_pool")
    backbone.model.attn_pool.pos_embed = nn.Parameter(torch.zeros(16, 32, dtype=F64))
    sae = ReluSAE.random_init(32, D_SAE, seed=0, layer=1)
    (problem,) = CPLRP().check_compatible(backbone, [sae])
    assert "attn_pool (attention pool with its own position embedding" in problem
    assert CPLRP().check_compatible(_backbone(saved, "hf:siglip"), [sae]) == []
