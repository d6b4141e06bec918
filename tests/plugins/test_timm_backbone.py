"""The timm backbone plugin: geometry, block-by-block forward, preprocessing, checkpoints and discovery."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
pytest.importorskip("cafe_timm")

from PIL import Image  # noqa: E402
from pydantic import ValidationError  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # noqa: E402
from timm.layers import resample_abs_pos_embed  # noqa: E402

from cafe_core.errors import CafeError  # noqa: E402
from cafe_core.protocols import Backbone  # noqa: E402
from cafe_timm import models  # noqa: E402
from cafe_timm.errors import TimmBackboneError  # noqa: E402
from cafe_timm.params import TimmParams  # noqa: E402
from cafe_timm.vit import TimmViT  # noqa: E402

NAME = "vit_tiny_patch16_224"
TINY = {"depth": 3, "embed_dim": 32, "num_heads": 2, "patch_size": 8}
REGS = tuple(f"reg{i}" for i in range(4))

# name -> (img_size, extra model_kwargs, expected grid, expected prefix tokens)
VARIANTS = {
    "cls": (32, {}, (4, 4), ("cls",)),
    "no_cls": (32, {"class_token": False, "global_pool": "avg"}, (4, 4), ()),
    "cls_reg4": (32, {"reg_tokens": 4}, (4, 4), ("cls", *REGS)),
    "reg4_only": (32, {"class_token": False, "reg_tokens": 4, "global_pool": "avg", "no_embed_class": True},
                  (4, 4), REGS),
    "no_embed_class": (32, {"no_embed_class": True}, (4, 4), ("cls",)),
    "patch4": (32, {"patch_size": 4}, (8, 8), ("cls",)),
    "pre_norm": (32, {"pre_norm": True}, (4, 4), ("cls",)),
    "non_square": (None, {"img_size": (32, 48)}, (4, 6), ("cls",)),
}


def tiny(img_size=32, seed=0, name=NAME, **kwargs) -> TimmViT:
    torch.manual_seed(seed)
    return TimmViT(name, img_size=img_size, model_kwargs={**TINY, **kwargs})


def variant(key: str, seed: int = 0) -> TimmViT:
    img_size, kwargs, _, _ = VARIANTS[key]
    torch.manual_seed(seed)
    return TimmViT(NAME, img_size=img_size, model_kwargs={**TINY, **kwargs})


def images(backbone: TimmViT, n: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, *backbone.image_size, generator=g)


def make_identity_block(block: torch.nn.Module) -> None:
    """Zero both residual branches so that the block returns its input."""
    with torch.no_grad():
        for linear in (block.attn.proj, block.mlp.fc2):
            linear.weight.zero_()
            linear.bias.zero_()


# Geometry -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(VARIANTS))
def test_geometry_of_variants(key):
    _, kwargs, grid, prefix = VARIANTS[key]
    backbone = variant(key)
    patch = kwargs.get("patch_size", TINY["patch_size"])
    assert backbone.grid_size == grid
    assert backbone.patch_size == (patch, patch)
    assert backbone.image_size == (grid[0] * patch, grid[1] * patch)
    assert backbone.prefix_tokens == prefix
    assert backbone.num_prefix_tokens == len(prefix) == backbone.model.num_prefix_tokens
    assert (backbone.depth, backbone.width) == (TINY["depth"], TINY["embed_dim"])
    h = backbone.forward_to(images(backbone), 0)
    assert h.shape == (2, len(prefix) + grid[0] * grid[1], TINY["embed_dim"])
    assert isinstance(backbone, Backbone)


def test_register_model_family_and_distilled_prefix_tokens():
    reg = TimmViT(
        "vit_small_patch14_reg4_dinov2", img_size=28, model_kwargs={"depth": 2, "embed_dim": 32, "num_heads": 2}
    )
    assert reg.prefix_tokens == ("cls", *REGS)
    assert (reg.patch_size, reg.grid_size) == ((14, 14), (2, 2))
    distilled = TimmViT(
        "deit_tiny_distilled_patch16_224", img_size=32, model_kwargs={"depth": 2, "embed_dim": 32, "num_heads": 2}
    )
    assert distilled.prefix_tokens == ("cls", "dist")
    assert distilled.forward_to(images(distilled), 1).shape == (2, 2 + 4, 32)


def test_hybrid_patch_size_is_the_stem_stride():
    hybrid = TimmViT("vit_tiny_r_s16_p8_224", img_size=64, model_kwargs={"depth": 1})
    # A stride-4 CNN stem followed by an 8x8 patch projection: one token per 32x32 pixels.
    assert hybrid.grid_size == (2, 2)
    assert hybrid.patch_size == (32, 32)
    assert hybrid.forward_to(images(hybrid), 0).shape == (2, 1 + 4, hybrid.width)


def test_token_patch_round_trip():
    backbone = variant("non_square")
    gh, gw = backbone.grid_size
    n = backbone.num_prefix_tokens
    assert backbone.num_tokens == n + gh * gw
    for index in range(backbone.num_tokens):
        patch = backbone.token_to_patch(index)
        if index < n:
            assert patch is None
        else:
            assert patch == ((index - n) // gw, (index - n) % gw)
            assert backbone.patch_to_token(*patch) == index
    for row in range(gh):
        for col in range(gw):
            assert backbone.token_to_patch(backbone.patch_to_token(row, col)) == (row, col)
    for bad in (-1, backbone.num_tokens):
        with pytest.raises(TimmBackboneError, match="out of range"):
            backbone.token_to_patch(bad)
    with pytest.raises(TimmBackboneError, match="patch column"):
        backbone.patch_to_token(0, gw)


@pytest.mark.parametrize("key", ["non_square", "cls_reg4", "no_cls"])
def test_patch_tokens_are_row_major(key):
    backbone = variant(key)
    make_identity_block(backbone.model.blocks[0])
    gh, gw = backbone.grid_size
    ph, pw = backbone.patch_size
    base = torch.zeros(1, 3, *backbone.image_size)
    perturbed = base.repeat(gh * gw, 1, 1, 1)
    for k in range(gh * gw):
        row, col = divmod(k, gw)
        perturbed[k, :, row * ph : (row + 1) * ph, col * pw : (col + 1) * pw] = 1.0
    with torch.no_grad():
        changed = (backbone.forward_to(perturbed, 0) - backbone.forward_to(base, 0)).abs().sum(-1) > 1e-6
    for k in range(gh * gw):
        row, col = divmod(k, gw)
        assert changed[k].nonzero().flatten().tolist() == [backbone.patch_to_token(row, col)]


# forward_to -----------------------------------------------------------------------------------------------


def _capture(model: torch.nn.Module):
    outputs, calls, handles = {}, {}, []

    def hook(name):
        def fn(module, args, output):
            calls[name] = calls.get(name, 0) + 1
            outputs[name] = output.detach().clone()

        return fn

    for i, block in enumerate(model.blocks):
        handles.append(block.register_forward_hook(hook(i)))
    for name in ("norm", "fc_norm", "head"):
        handles.append(getattr(model, name).register_forward_hook(hook(name)))
    return outputs, calls, handles


@pytest.mark.parametrize("key", sorted(VARIANTS))
def test_forward_to_matches_hidden_states_and_stops_early(key):
    backbone = variant(key)
    x = images(backbone)
    outputs, calls, handles = _capture(backbone.model)
    try:
        with torch.no_grad():
            backbone.model.forward_features(x)
        reference = dict(outputs)
        for layer in range(backbone.depth):
            calls.clear()
            with torch.no_grad():
                h = backbone.forward_to(x, layer)
            torch.testing.assert_close(h, reference[layer], rtol=0, atol=1e-6)
            assert calls == {i: 1 for i in range(layer + 1)}
    finally:
        for handle in handles:
            handle.remove()


def test_forward_to_is_differentiable_and_model_is_left_trainable():
    backbone = variant("cls_reg4")
    assert not backbone.model.training
    assert all(p.requires_grad for p in backbone.model.parameters())
    x = images(backbone).requires_grad_(True)
    backbone.forward_to(x, 1)[:, 7].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("layer", [-1, 3, 10, 1.0, True, "1"])
def test_invalid_layer_names_the_valid_range(layer):
    backbone = variant("cls")
    with pytest.raises(TimmBackboneError, match=r"0\.\.2|\[0, 2\]"):
        backbone.forward_to(images(backbone), layer)


def test_wrong_input_size_tells_how_to_fix():
    backbone = variant("cls")
    with pytest.raises(TimmBackboneError, match=r"\(48, 48\).*\(32, 32\).*img_size"):
        backbone.forward_to(torch.zeros(1, 3, 48, 48), 0)
    with pytest.raises(TimmBackboneError, match=r"\[B, 3, H, W\]"):
        backbone.forward_to(torch.zeros(3, 32, 32), 0)


def test_to_changes_dtype_of_model_inputs_and_outputs():
    backbone = variant("cls")
    assert backbone.to(dtype=torch.float64) is backbone
    assert backbone.dtype == torch.float64 and backbone.device == torch.device("cpu")
    x = backbone.preprocess([torch.rand(3, 32, 32)])
    assert x.dtype == torch.float64 and backbone.mean.dtype == torch.float64
    assert backbone.forward_to(x, 0).dtype == torch.float64


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_cuda_matches_cpu():
    backbone = variant("cls_reg4")
    x = images(backbone)
    with torch.no_grad():
        expected = backbone.forward_to(x, 2)
        backbone.to("cuda")
        assert backbone.device.type == "cuda" and backbone.preprocess([torch.rand(3, 8, 8)]).is_cuda
        torch.testing.assert_close(backbone.forward_to(x.cuda(), 2).cpu(), expected, rtol=1e-4, atol=1e-4)


# Model creation errors ----------------------------------------------------------------------------------


def test_non_vit_models_are_rejected():
    with pytest.raises(TimmBackboneError, match="only timm VisionTransformer"):
        TimmViT("resnet18")


def test_unknown_model_suggests_close_names():
    with pytest.raises(TimmBackboneError, match="vit_tiny_patch16_224"):
        TimmViT("vit_tiny_patch16_22")


def test_bad_model_kwargs_are_named():
    with pytest.raises(TimmBackboneError, match="model_kwargs"):
        TimmViT(NAME, model_kwargs={"depthh": 2})


def test_pretrained_without_network_suggests_checkpoint(monkeypatch):
    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
        raise AssertionError("not reached")

    monkeypatch.setattr(models.timm, "create_model", offline)
    with pytest.raises(TimmBackboneError, match="checkpoint="):
        TimmViT(NAME, pretrained=True)


def test_image_size_not_a_multiple_of_patch_size():
    with pytest.raises(TimmBackboneError, match="multiple of"):
        tiny(img_size=30)


# Preprocessing ------------------------------------------------------------------------------------------


def test_preprocess_pil_images_of_any_mode_and_size():
    backbone = variant("non_square")  # image_size (32, 48), mean = std = 0.5
    pics = [
        Image.new("RGB", (50, 40), (255, 0, 128)),
        Image.new("L", (20, 70), 64),
        Image.new("RGBA", (33, 33), (10, 20, 30, 0)),
        Image.new("P", (100, 100), 0),
    ]
    x = backbone.preprocess(pics)
    assert x.shape == (4, 3, 32, 48) and x.dtype == torch.float32
    colours = [(255, 0, 128), (64, 64, 64), (10, 20, 30), (0, 0, 0)]
    for row, colour in zip(x, colours):
        expected = ((torch.tensor(colour) / 255.0 - 0.5) / 0.5).reshape(3, 1, 1).expand(3, 32, 48)
        torch.testing.assert_close(row, expected, rtol=0, atol=1e-6)


def test_preprocess_tensors_resizes_and_normalises():
    backbone = variant("cls")
    exact = torch.rand(3, 32, 32)
    grey = torch.full((1, 20, 50), 0.25)
    x = backbone.preprocess([exact, grey, torch.ones(3, 64, 16)])
    assert x.shape == (3, 3, 32, 32)
    torch.testing.assert_close(x[0], (exact - 0.5) / 0.5)
    torch.testing.assert_close(x[1], torch.full((3, 32, 32), -0.5))
    torch.testing.assert_close(x[2], torch.ones(3, 32, 32))
    torch.testing.assert_close(x[0] * backbone.std + backbone.mean, exact)
    batch = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(backbone.preprocess(batch), (batch - 0.5) / 0.5)


def test_mean_and_std_come_from_the_pretrained_config():
    backbone = TimmViT("deit_tiny_patch16_224", img_size=32, model_kwargs={"depth": 1, "embed_dim": 32, "num_heads": 2})
    assert backbone.mean.shape == backbone.std.shape == (3, 1, 1)
    torch.testing.assert_close(backbone.mean.flatten(), torch.tensor(IMAGENET_DEFAULT_MEAN))
    torch.testing.assert_close(backbone.std.flatten(), torch.tensor(IMAGENET_DEFAULT_STD))
    pixels = torch.rand(3, 32, 32)
    expected = (pixels - torch.tensor(IMAGENET_DEFAULT_MEAN)[:, None, None]) / torch.tensor(IMAGENET_DEFAULT_STD)[
        :, None, None
    ]
    torch.testing.assert_close(backbone.preprocess([pixels])[0], expected)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (torch.zeros(3, 8, 8, dtype=torch.uint8), "divide 8-bit"),
        (torch.full((3, 8, 8), -2.0), r"in \[0, 1\]"),
        (torch.zeros(4, 8, 8), r"\[3, H, W\]"),
        ("image.png", "PIL images"),
    ],
)
def test_preprocess_rejects_bad_inputs(image, message):
    with pytest.raises(TimmBackboneError, match=message):
        variant("cls").preprocess([image])


# Checkpoints --------------------------------------------------------------------------------------------


def _output(backbone: TimmViT) -> torch.Tensor:
    with torch.no_grad():
        return backbone.forward_to(images(backbone, seed=3), backbone.depth - 1)


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "pt_wrapped", "bin_dataparallel"])
def test_checkpoint_round_trip(tmp_path, fmt):
    source = tiny(seed=0, reg_tokens=4)
    state = {k: v.contiguous() for k, v in source.model.state_dict().items()}
    if fmt == "safetensors":
        path = tmp_path / "vit.safetensors"
        save_file(state, str(path))
    elif fmt == "pth":
        path = tmp_path / "vit.pth"
        torch.save(state, path)
    elif fmt == "pt_wrapped":
        path = tmp_path / "vit.pt"
        torch.save({"state_dict": state, "epoch": 3}, path)
    else:
        path = tmp_path / "vit.bin"
        torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, path)
    torch.manual_seed(1)
    loaded = TimmViT(NAME, img_size=32, checkpoint=path, model_kwargs={**TINY, "reg_tokens": 4})
    fresh = tiny(seed=1, reg_tokens=4)
    assert not torch.allclose(_output(fresh), _output(source))
    torch.testing.assert_close(_output(loaded), _output(source), rtol=0, atol=0)


def test_checkpoint_at_another_image_size_resamples_position_embedding(tmp_path):
    source = tiny(img_size=32)
    path = tmp_path / "vit.safetensors"
    save_file(source.model.state_dict(), str(path))
    loaded = TimmViT(NAME, img_size=48, checkpoint=path, model_kwargs=TINY)
    assert loaded.grid_size == (6, 6)
    expected = resample_abs_pos_embed(source.model.pos_embed.detach(), new_size=(6, 6), num_prefix_tokens=1)
    torch.testing.assert_close(loaded.model.pos_embed.detach(), expected)
    torch.testing.assert_close(loaded.model.blocks[2].mlp.fc1.weight, source.model.blocks[2].mlp.fc1.weight)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_corrupt_checkpoint_names_the_file(tmp_path, suffix):
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"\x00\x01 definitely not a checkpoint")
    with pytest.raises(TimmBackboneError, match=rf"cannot read checkpoint .*broken\{suffix}"):
        TimmViT(NAME, img_size=32, checkpoint=path, model_kwargs=TINY)


def test_checkpoint_that_is_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(TimmBackboneError, match="not a state dict"):
        TimmViT(NAME, img_size=32, checkpoint=path, model_kwargs=TINY)


def test_checkpoint_of_another_architecture_lists_keys_and_fix(tmp_path):
    path = tmp_path / "deep.pth"
    torch.save(tiny(depth=2).model.state_dict(), path)
    with pytest.raises(TimmBackboneError, match=r"deep\.pth.*missing key.*blocks\.2\..*model_kwargs"):
        TimmViT(NAME, img_size=32, checkpoint=path, model_kwargs=TINY)
    with pytest.raises(TimmBackboneError, match=r"shape mismatch.*cls_token \(1, 1, 32\) vs \(1, 1, 48\)"):
        TimmViT(NAME, img_size=32, checkpoint=path, model_kwargs={**TINY, "depth": 2, "embed_dim": 48})


# Params and discovery -----------------------------------------------------------------------------------


def test_params_validation(tmp_path):
    with pytest.raises(ValidationError, match="does not exist"):
        TimmParams(model=NAME, checkpoint=tmp_path / "missing.safetensors")
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    with pytest.raises(ValidationError, match="both set"):
        TimmParams(model=NAME, pretrained=True, checkpoint=weights)
    with pytest.raises(ValidationError, match="img_size"):
        TimmParams(model=NAME, img_size=32, model_kwargs={"img_size": 64})
    with pytest.raises(ValidationError, match="pretrained"):
        TimmParams(model=NAME, model_kwargs={"pretrained": True})
    with pytest.raises(ValidationError):
        TimmParams(model=NAME, weights="x")
    with pytest.raises(ValidationError, match="model must be a timm model name"):
        TimmParams(model="  ")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # other installed plugins may warn; only this one matters here
        from cafe_core.plugins import PluginHost

        registration = PluginHost().registry("backbone").get("timm")
    with pytest.raises(ValidationError, match="does not exist"):
        registration.build({"model": NAME, "checkpoint": str(tmp_path / "missing.pth")})
    assert issubclass(TimmBackboneError, CafeError)


def test_plugin_module_imports_neither_torch_nor_timm():
    code = "import sys, cafe_timm.plugin; assert 'torch' not in sys.modules and 'timm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_discovered_through_entry_point():
    from cafe_core.plugins import PluginHost

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # other installed plugins may warn; only this one matters here
        registry = PluginHost().registry("backbone")
    registration = registry.get("timm")
    assert registration.plugin == "timm"
    assert registry.get("timm_vit") is registration
    backbone = registration.build({"model": NAME, "img_size": 32, "model_kwargs": {**TINY, "reg_tokens": 4}})
    assert isinstance(backbone, TimmViT) and isinstance(backbone, Backbone)
    assert backbone.prefix_tokens == ("cls", *REGS)
    assert backbone.forward_to(backbone.preprocess([Image.new("RGB", (40, 40))]), 2).shape == (1, 21, 32)


# Read-out: the final norm and the attention-pool head -------------------------------------------------------


def test_final_norm_last_and_all_are_timms_normalised_features():
    backbone = tiny(reg_tokens=2)
    x = images(backbone)
    net = backbone.model
    with torch.no_grad():
        last = TimmViT(NAME, img_size=32, model_kwargs={**TINY, "reg_tokens": 2}, final_norm="last")
        last.model.load_state_dict(net.state_dict())
        every = TimmViT(NAME, img_size=32, model_kwargs={**TINY, "reg_tokens": 2}, final_norm="all")
        every.model.load_state_dict(net.state_dict())
        torch.testing.assert_close(last.forward_to(x, 2), net.forward_features(x))
        torch.testing.assert_close(last.forward_to(x, 1), backbone.forward_to(x, 1))  # only the last block
        _, (first,) = net.forward_intermediates(x, indices=[0], norm=True, return_prefix_tokens=True,
                                                output_fmt="NLC", intermediates_only=False)
        patches, prefix = first  # timm gives (patch tokens, prefix tokens)
        torch.testing.assert_close(every.forward_to(x, 0), torch.cat([prefix, patches], 1))
    assert last.trailing_modules(2) == ("norm",) and last.trailing_modules(1) == ()
    assert every.trailing_modules(0) == ("norm",) and backbone.trailing_modules(2) == ()


def test_pool_token_is_the_attention_pool_heads_output():
    kwargs = {**TINY, "class_token": False, "global_pool": "map", "num_classes": 0}
    torch.manual_seed(3)
    backbone = TimmViT("vit_base_patch16_siglip_224", img_size=32, model_kwargs=kwargs, pool_token=True)
    x = images(backbone)
    net = backbone.model
    assert backbone.prefix_tokens == ("pool",) and backbone.trailing_modules(0) == ("norm", "attn_pool")
    with torch.no_grad():
        tokens = backbone.forward_to(x, 2)
        torch.testing.assert_close(tokens[:, 0], net.forward_head(net.forward_features(x), pre_logits=True))
        blocks = net.blocks(net.norm_pre(net._pos_embed(net.patch_embed(x))))
        torch.testing.assert_close(tokens[:, 1:], blocks)


def test_read_out_the_model_has_no_module_for_is_refused():
    with pytest.raises(TimmBackboneError, match="its tokens have none"):
        TimmViT(NAME, img_size=32, model_kwargs={**TINY, "global_pool": "avg"}, final_norm="last")
    with pytest.raises(TimmBackboneError, match="global_pool='map'"):
        TimmViT(NAME, img_size=32, model_kwargs=TINY, pool_token=True)
    with pytest.raises(ValidationError, match="final_norm"):
        TimmParams(model=NAME, final_norm="every")


def test_a_transform_that_gives_another_size_is_named():
    from cafe_timm.preprocess import ImagePreprocessor

    wrong = ImagePreprocessor((32, 32), (0.5,) * 3, (0.5,) * 3, lambda image: torch.zeros(3, 24, 24))
    with pytest.raises(TimmBackboneError, match=r"made image 0 \(3, 24, 24\), not \(3, 32, 32\)"):
        wrong([Image.new("RGB", (40, 40))])
