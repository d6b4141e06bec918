"""The timm_conv backbone: stage geometry, stage-by-stage forward, heatmap grid, preprocessing, checkpoints."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
pytest.importorskip("cafe_timm")

from PIL import Image  # noqa: E402
from pydantic import ValidationError  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # noqa: E402

from cafe_core.protocols import Backbone  # noqa: E402
from cafe_timm.conv import TimmConvNet  # noqa: E402
from cafe_timm.errors import TimmBackboneError  # noqa: E402
from cafe_timm.params import TimmConvParams  # noqa: E402

SIZE = 64
# name -> (model_kwargs, stage widths); all have stage strides (4, 8, 16, 32).
VARIANTS = {
    "resnet18": ({"channels": (8, 16, 24, 32), "layers": (1, 1, 1, 1)}, (8, 16, 24, 32)),
    "resnet50": ({"channels": (4, 8, 8, 8), "layers": (1, 1, 1, 1)}, (16, 32, 32, 32)),
    "resnet10t": ({"channels": (8, 16, 24, 32), "stem_width": 8}, (8, 16, 24, 32)),
    "resnet26d": ({"channels": (4, 4, 8, 8), "layers": (1, 1, 1, 1), "stem_width": 8}, (16, 16, 32, 32)),
    "convnext_atto": ({"depths": (1, 1, 1, 1), "dims": (8, 16, 24, 32)}, (8, 16, 24, 32)),
    "convnext_tiny": ({"depths": (1, 1, 2, 1), "dims": (8, 16, 24, 32)}, (8, 16, 24, 32)),
}
STRIDES = (4, 8, 16, 32)


def variant(name: str, seed: int = 0, **kwargs) -> TimmConvNet:
    torch.manual_seed(seed)
    return TimmConvNet(name, img_size=kwargs.pop("img_size", SIZE), model_kwargs=VARIANTS[name][0], **kwargs)


def images(backbone: TimmConvNet, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, *backbone.image_size, generator=torch.Generator().manual_seed(seed))


def _randomise_batch_norms(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))


# Geometry -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_geometry_of_variants(name):
    backbone = variant(name)
    widths = VARIANTS[name][1]
    assert backbone.depth == 4 and backbone.stage_widths == widths and backbone.stage_strides == STRIDES
    assert backbone.width == widths[-1]
    assert backbone.image_size == (SIZE, SIZE) and backbone.prefix_tokens == () and backbone.num_prefix_tokens == 0
    # The default heatmap patch is the deepest stage's stride: one patch per token of the last stage.
    assert backbone.patch_size == (32, 32) and backbone.grid_size == (2, 2)
    x = images(backbone)
    for layer, (width, stride) in enumerate(zip(widths, STRIDES)):
        assert backbone.layer_grid(layer) == (SIZE // stride, SIZE // stride)
        assert backbone.layer_width(layer) == width
        assert backbone.num_tokens(layer) == (SIZE // stride) ** 2
        with torch.no_grad():
            assert backbone.forward_to(x, layer).shape == (2, (SIZE // stride) ** 2, width)
    assert isinstance(backbone, Backbone)


def test_stage_names_follow_the_family():
    assert variant("resnet18").stage_names == ("layer1", "layer2", "layer3", "layer4")
    assert variant("convnext_atto").stage_names == ("stages.0", "stages.1", "stages.2", "stages.3")


def test_default_image_size_is_the_pretrained_input_size():
    backbone = TimmConvNet("resnet18", model_kwargs=VARIANTS["resnet18"][0])
    assert backbone.image_size == (224, 224) and backbone.grid_size == (7, 7)
    assert backbone.layer_grid(0) == (56, 56)


def test_patch_size_sets_the_heatmap_grid_for_every_layer():
    backbone = variant("resnet18", patch_size=16)
    assert backbone.patch_size == (16, 16) and backbone.grid_size == (4, 4)
    assert backbone.layer_grid(3) == (2, 2)  # a last-stage token covers 2x2 heatmap patches
    with pytest.raises(TimmBackboneError, match="heatmap patch size"):
        variant("resnet18", patch_size=24)
    with pytest.raises(TimmBackboneError, match="multiple of 32"):
        variant("resnet18", img_size=48)


def test_token_cell_and_patch_conversions():
    backbone = variant("convnext_atto", patch_size=16)
    for layer in range(backbone.depth):
        h, w = backbone.layer_grid(layer)
        for index in range(h * w):
            row, col = backbone.token_to_cell(layer, index)
            assert (row, col) == divmod(index, w)
            assert backbone.cell_to_token(layer, row, col) == index
            stride = backbone.stage_strides[layer]
            centre = ((row + 0.5) * stride, (col + 0.5) * stride)
            assert backbone.token_to_patch(layer, index) == (int(centre[0] // 16), int(centre[1] // 16))
    with pytest.raises(TimmBackboneError, match="out of range"):
        backbone.token_to_cell(0, 16 * 16)
    with pytest.raises(TimmBackboneError, match="map column"):
        backbone.cell_to_token(1, 0, 8)


# forward_to ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "resnet26d", "convnext_tiny"])
def test_forward_to_is_the_stage_output_row_major_and_stops_early(name):
    backbone = variant(name)
    _randomise_batch_norms(backbone.model)
    x = images(backbone)
    with torch.no_grad():
        # timm's own taps; a ResNet's list starts with the stem's output
        maps = backbone.model.forward_intermediates(x, intermediates_only=True)[-backbone.depth :]
    calls = {}
    names = (*backbone.stage_names, backbone.model.default_cfg["classifier"])
    handles = [
        backbone.model.get_submodule(n).register_forward_pre_hook(
            lambda module, args, n=n: calls.__setitem__(n, calls.get(n, 0) + 1)
        )
        for n in names
    ]
    try:
        for layer in range(backbone.depth):
            calls.clear()
            with torch.no_grad():
                tokens = backbone.forward_to(x, layer)
            b, c, h, w = maps[layer].shape
            # token k = position (k // w, k % w) of the stage's map
            torch.testing.assert_close(tokens.transpose(1, 2).reshape(b, c, h, w), maps[layer], rtol=0, atol=0)
            assert calls == {n: 1 for n in backbone.stage_names[: layer + 1]}
    finally:
        for handle in handles:
            handle.remove()


def test_the_contract_the_generic_kit_checks_with_per_layer_shapes():
    # check_backbone expects one token count and width for every layer; these are its rules with the
    # geometry of each stage instead.
    backbone = variant("resnet50")
    x = images(backbone, n=3)
    gh, gw = backbone.grid_size
    assert (gh * backbone.patch_size[0], gw * backbone.patch_size[1]) == backbone.image_size
    with torch.no_grad():
        for layer in range(backbone.depth):
            tokens = backbone.forward_to(x, layer)
            assert tokens.shape == (3, backbone.num_tokens(layer), backbone.layer_width(layer))
            assert torch.equal(tokens, backbone.forward_to(x, layer))
            torch.testing.assert_close(tokens[:1], backbone.forward_to(x[:1], layer), rtol=1e-4, atol=1e-5)
    for bad in (-1, backbone.depth, 1.0, True, "1"):
        with pytest.raises(TimmBackboneError, match=r"0\.\.3|\[0, 3\]"):
            backbone.forward_to(x, bad)


def test_eval_mode_uses_and_keeps_the_running_statistics():
    backbone = variant("resnet18")
    _randomise_batch_norms(backbone.model)
    assert not backbone.model.training
    stats = {k: v.clone() for k, v in backbone.model.state_dict().items() if "running" in k}
    x = images(backbone, n=4)
    with torch.no_grad():
        alone = backbone.forward_to(x[:1], 3)
        batch = backbone.forward_to(x, 3)
    torch.testing.assert_close(batch[:1], alone, rtol=1e-5, atol=1e-6)
    for key, value in backbone.model.state_dict().items():
        if key in stats:
            assert torch.equal(value, stats[key]), key


def test_forward_to_is_differentiable_and_parameters_stay_trainable():
    backbone = variant("convnext_atto")
    assert all(p.requires_grad for p in backbone.model.parameters())
    x = images(backbone).requires_grad_(True)
    backbone.forward_to(x, 1)[:, 5].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_wrong_input_tells_how_to_fix():
    backbone = variant("resnet18")
    with pytest.raises(TimmBackboneError, match=r"\(96, 96\).*\(64, 64\).*img_size"):
        backbone.forward_to(torch.zeros(1, 3, 96, 96), 0)
    with pytest.raises(TimmBackboneError, match=r"\[B, 3, H, W\]"):
        backbone.forward_to(torch.zeros(3, 64, 64), 0)


def test_to_changes_dtype():
    backbone = variant("convnext_atto")
    assert backbone.to(dtype=torch.float64) is backbone
    x = backbone.preprocess([torch.rand(3, 20, 20)])
    assert x.dtype == torch.float64 and backbone.mean.dtype == torch.float64
    assert backbone.forward_to(x, 2).dtype == torch.float64


# Models, preprocessing, checkpoints ---------------------------------------------------------------------


def test_other_families_are_rejected():
    with pytest.raises(TimmBackboneError, match="only timm ResNet and ConvNeXt"):
        TimmConvNet("vit_tiny_patch16_224", model_kwargs={"depth": 1})
    with pytest.raises(TimmBackboneError, match="resnet18"):
        TimmConvNet("resnet1")


def test_preprocess_uses_the_pretrained_normalisation():
    backbone = variant("resnet18")
    pixels = torch.rand(3, 64, 64)
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_DEFAULT_STD)[:, None, None]
    torch.testing.assert_close(backbone.preprocess([pixels])[0], (pixels - mean) / std)
    x = backbone.preprocess([Image.new("RGB", (80, 50), (255, 0, 0)), torch.ones(3, 32, 16)])
    assert x.shape == (2, 3, 64, 64)
    torch.testing.assert_close(x[0, :, 32, 32], ((torch.tensor([1.0, 0, 0]) - mean.flatten()) / std.flatten()))


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    source = variant("convnext_atto", seed=0)
    path = tmp_path / "convnext.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    loaded = TimmConvNet("convnext_atto", img_size=SIZE, checkpoint=path, model_kwargs=VARIANTS["convnext_atto"][0])
    x = images(source)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_to(x, 3), source.forward_to(x, 3), rtol=0, atol=0)
    with pytest.raises(TimmBackboneError, match=r"missing key.*model_kwargs \(layers, channels"):
        TimmConvNet("convnext_atto", checkpoint=path, model_kwargs={"depths": (1, 1, 2, 1), "dims": (8, 16, 24, 32)})


# Params and discovery -----------------------------------------------------------------------------------


def test_params_validation(tmp_path):
    assert TimmConvParams(model="resnet18", patch_size=16).patch_size == 16
    with pytest.raises(ValidationError):
        TimmConvParams(model="resnet18", patch_size=0)
    with pytest.raises(ValidationError, match="does not exist"):
        TimmConvParams(model="resnet18", checkpoint=tmp_path / "missing.pth")
    with pytest.raises(ValidationError):
        TimmConvParams(model="resnet18", stride=16)


def test_discovered_through_entry_point():
    from cafe_core.plugins import PluginHost

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # other installed plugins may warn; only this one matters here
        registration = PluginHost().registry("backbone").get("timm_conv")
    assert registration.plugin == "timm"
    backbone = registration.build({"model": "resnet18", "img_size": SIZE, "patch_size": 16,
                                   "model_kwargs": VARIANTS["resnet18"][0]})
    assert isinstance(backbone, TimmConvNet) and isinstance(backbone, Backbone)
    assert backbone.grid_size == (4, 4)
    assert backbone.forward_to(backbone.preprocess([Image.new("RGB", (40, 40))]), 1).shape == (1, 64, 16)


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto"])
def test_the_generic_backbone_kit_passes_with_per_stage_grids(name):
    from cafe_core.testing import check_backbone

    backbone = variant(name)
    outputs = check_backbone(backbone, images(backbone))
    assert outputs[0].shape == (2, 16 * 16, VARIANTS[name][1][0])
