"""The ViT families SAEs are trained on: cafe's tokens at every layer equal what each library computes.

The references are the libraries' own outputs on tiny random-weight models built from their own config
classes: a forward hook on open_clip's ``transformer.resblocks[L]`` (what saev records), Hugging Face's
``hidden_states[L + 1]`` and ``last_hidden_state``/``pooler_output``, and for checkpoints of those families
loaded by the ``timm`` backbone, the model that defined the weights.
"""

from __future__ import annotations

import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

from cafe_core.plugins import PluginHost  # noqa: E402
from cafe_core.testing import check_backbone  # noqa: E402
from cafe_timm.errors import TimmBackboneError  # noqa: E402
from cafe_timm.hf_vit import HFVisionViT  # noqa: E402
from cafe_timm.open_clip_vit import OpenClipViT  # noqa: E402
from cafe_timm.params import HFVisionParams, OpenClipParams  # noqa: E402
from cafe_timm.tiny import HF_FAMILIES, save_hf, save_open_clip  # noqa: E402
from cafe_timm.vit import TimmViT  # noqa: E402

pytestmark = pytest.mark.slow

TOL = {"rtol": 1e-5, "atol": 1e-5}
NATIVE = ("dinov2", "dinov2_registers")  # interpolate their position embedding whatever the size


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """``{family: folder}`` of every tiny HF model and ``{variant: name}`` of every tiny open_clip model."""
    root = tmp_path_factory.mktemp("families")
    hf = {family: save_hf(root / family, family, seed=i) for i, family in enumerate(HF_FAMILIES)}
    oc = {v: save_open_clip(root / f"oc_{v}", v, seed=i) for i, v in enumerate(("openai", "layer_scale", "no_ln_pre"))}
    return hf, oc


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _open_clip_blocks(folder: str, x: torch.Tensor) -> list[torch.Tensor]:
    """The output of every block of open_clip's tower, recorded by forward hooks (as saev records them)."""
    visual = open_clip.create_model(f"local-dir:{folder}").visual.eval()
    blocks = visual.trunk.blocks if hasattr(visual, "trunk") else visual.transformer.resblocks
    outputs = []
    hooks = [block.register_forward_hook(lambda m, i, o: outputs.append(o)) for block in blocks]
    try:
        with torch.no_grad():
            pooled = visual(x)
    finally:
        for hook in hooks:
            hook.remove()
    return outputs, pooled


def _hf_outputs(folder: str, family: str, x: torch.Tensor):
    model = getattr(transformers, HF_FAMILIES[family][1]).from_pretrained(folder).eval()
    kwargs = {} if family in NATIVE else {"interpolate_pos_encoding": True}
    with torch.no_grad():
        return model, model(pixel_values=x, output_hidden_states=True, **kwargs)


# --- open_clip -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["openai", "layer_scale", "no_ln_pre"])
def test_open_clip_tokens_are_the_outputs_of_its_blocks(folders, variant):
    folder = folders[1][variant]
    backbone = OpenClipViT(path=folder)
    x = _images(2, 32)
    blocks, _ = _open_clip_blocks(folder, x)
    assert backbone.prefix_tokens == ("cls",) and backbone.depth == len(blocks) == 3
    with torch.no_grad():
        for layer, expected in enumerate(blocks):
            torch.testing.assert_close(backbone.forward_to(x, layer), expected, **TOL)
    check_backbone(backbone, x)


def test_open_clip_final_norm_is_ln_post_on_every_token(folders):
    folder = folders[1]["openai"]
    visual = open_clip.create_model(f"local-dir:{folder}").visual.eval()
    visual.output_tokens = True
    x = _images(2, 32)
    blocks, _ = _open_clip_blocks(folder, x)
    with torch.no_grad():
        _, tokens = visual(x)  # open_clip's patch tokens: ln_post of the last block's output
        last = OpenClipViT(path=folder, final_norm="last").forward_to(x, 2)
        every = OpenClipViT(path=folder, final_norm="all").forward_to(x, 0)
        torch.testing.assert_close(last[:, 1:], tokens, **TOL)
        torch.testing.assert_close(every, visual.ln_post(blocks[0]), **TOL)


def test_open_clip_tower_built_by_timm_and_its_pool_token(tmp_path):
    # open_clip's SigLIP towers are timm models; timm's smallest ViT with an attention-pool head stands in.
    folder = save_open_clip(tmp_path / "tower", "timm_tower")
    backbone = OpenClipViT(path=folder, pool_token=True)
    assert backbone.prefix_tokens == ("reg0", "pool")
    x = _images(1, 160)
    blocks, pooled = _open_clip_blocks(folder, x)
    with torch.no_grad():
        for layer in (0, backbone.depth - 1):
            tokens = backbone.forward_to(x, layer)
            torch.testing.assert_close(torch.cat([tokens[:, :1], tokens[:, 2:]], 1), blocks[layer], **TOL)
        torch.testing.assert_close(tokens[:, 1], pooled, **TOL)


def test_open_clip_weights_from_a_checkpoint_file(folders, tmp_path):
    folder, other = folders[1]["layer_scale"], folders[1]["openai"]
    clip = open_clip.create_model(f"local-dir:{folder}")
    torch.save(clip.visual.state_dict(), tmp_path / "visual.pt")
    torch.save(clip.state_dict(), tmp_path / "whole.pt")
    x = _images(1, 32)
    with torch.no_grad():
        expected = OpenClipViT(path=folder).forward_to(x, 2)
        for weights in ("visual.pt", "whole.pt"):
            # The layer-scale model's config, its weights from the file: not those of the folder it names.
            architecture = tmp_path / f"config_{weights}"
            architecture.mkdir()
            (architecture / "open_clip_config.json").write_text((pathlib.Path(folder) / "open_clip_config.json")
                                                                 .read_text())
            built = OpenClipViT(path=architecture, checkpoint=tmp_path / weights)
            torch.testing.assert_close(built.forward_to(x, 2), expected)
    torch.save({"conv1.weight": clip.visual.conv1.weight}, tmp_path / "partial.pt")
    with pytest.raises(TimmBackboneError, match="fits neither .*missing"):
        OpenClipViT(path=folder, checkpoint=tmp_path / "partial.pt")
    with pytest.raises(TimmBackboneError, match="could not load checkpoint"):
        OpenClipViT(path=other, checkpoint=tmp_path / "whole.pt")  # layer scales the other model lacks


def test_open_clip_preprocessing_is_its_own_transform(folders):
    folder = folders[1]["openai"]
    _, _, transform = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 60, 3), dtype=np.uint8))
    backbone = OpenClipViT(path=folder)
    torch.testing.assert_close(backbone.preprocess([image])[0], transform(image))
    torch.testing.assert_close(backbone.mean.flatten(), torch.tensor(open_clip.OPENAI_DATASET_MEAN))


def test_unknown_open_clip_model_suggests_names():
    with pytest.raises(TimmBackboneError, match="Did you mean 'ViT-B-16'"):
        OpenClipViT("ViT-B-61")


# --- Hugging Face ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(HF_FAMILIES))
@pytest.mark.parametrize("size", [32, 48], ids=lambda s: f"{s}px")
def test_hf_tokens_are_its_hidden_states(folders, family, size):
    folder = folders[0][family]
    backbone = HFVisionViT(folder, img_size=size)
    x = _images(2, size)
    _, out = _hf_outputs(folder, family, x)
    assert len(out.hidden_states) == backbone.depth + 1
    with torch.no_grad():
        for layer in range(backbone.depth):
            torch.testing.assert_close(backbone.forward_to(x, layer), out.hidden_states[layer + 1], **TOL)


@pytest.mark.parametrize("family", list(HF_FAMILIES))
def test_hf_prefix_tokens(folders, family):
    expected = {"clip": ("cls",), "dinov2": ("cls",), "dinov2_registers": ("cls", "reg0", "reg1"), "siglip": (),
                "vit": ("cls",)}[family]
    assert HFVisionViT(folders[0][family], img_size=32).prefix_tokens == expected


@pytest.mark.parametrize("family", list(HF_FAMILIES))
def test_last_hidden_state_is_the_final_norm_of_the_last_block_except_for_clip(folders, family):
    folder = folders[0][family]
    x = _images(2, 32)
    _, out = _hf_outputs(folder, family, x)
    with torch.no_grad():
        plain = HFVisionViT(folder, img_size=32).forward_to(x, 2)
        normed = HFVisionViT(folder, img_size=32, final_norm="last").forward_to(x, 2)
    if family == "clip":  # post_layernorm is applied to the pooled class token only
        torch.testing.assert_close(plain, out.last_hidden_state, **TOL)
        torch.testing.assert_close(normed[:, 0], out.pooler_output, **TOL)
    else:
        torch.testing.assert_close(normed, out.last_hidden_state, **TOL)
        assert (plain - out.last_hidden_state).abs().max() > 0.1


def test_final_norm_all_normalises_every_block_output(folders):
    folder = folders[0]["dinov2"]
    x = _images(2, 32)
    model, out = _hf_outputs(folder, "dinov2", x)
    backbone = HFVisionViT(folder, img_size=32, final_norm="all")
    with torch.no_grad():
        torch.testing.assert_close(backbone.forward_to(x, 0), model.layernorm(out.hidden_states[1]), **TOL)


def test_siglip_pool_token_is_the_pooler_output(folders):
    folder = folders[0]["siglip"]
    x = _images(2, 32)
    _, out = _hf_outputs(folder, "siglip", x)
    backbone = HFVisionViT(folder, pool_token=True)
    assert backbone.prefix_tokens == ("pool",)
    with torch.no_grad():
        tokens = backbone.forward_to(x, 2)
    torch.testing.assert_close(tokens[:, 0], out.pooler_output, **TOL)
    torch.testing.assert_close(tokens[:, 1:], out.hidden_states[3], **TOL)
    check_backbone(backbone, x)


def test_pool_token_needs_an_attention_pool_head(folders):
    with pytest.raises(TimmBackboneError, match="global_pool='map'"):
        HFVisionViT(folders[0]["vit"], pool_token=True)


def test_a_two_tower_checkpoint_is_read_as_its_vision_tower(tmp_path):
    config = transformers.CLIPConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "patch_size": 8, "image_size": 32},
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 64, "max_position_embeddings": 8},
        projection_dim=16,
    )
    transformers.CLIPModel(config).save_pretrained(tmp_path)
    x = _images(1, 32)
    with torch.no_grad():
        expected = transformers.CLIPModel.from_pretrained(tmp_path).vision_model(x, output_hidden_states=True)
        torch.testing.assert_close(HFVisionViT(str(tmp_path)).forward_to(x, 1), expected.hidden_states[2], **TOL)


def test_default_size_and_preprocessing_come_from_the_image_processor(folders, tmp_path):
    # DINOv2 checkpoints say image_size 518 and ship a processor that crops 224: the processor decides.
    folder = save_hf(tmp_path / "dino", "dinov2", image_size=64)
    processor = transformers.BitImageProcessor(
        size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}, do_center_crop=True,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    )
    processor.save_pretrained(folder)
    backbone = HFVisionViT(folder)
    assert backbone.image_size == (32, 32)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    expected = processor(images=image, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(backbone.preprocess([image])[0], expected)
    # Without a saved processor, the family's: SigLIP squashes to the size, mean and std 0.5.
    siglip = HFVisionViT(folders[0]["siglip"])
    expected = transformers.SiglipImageProcessor(size={"height": 32, "width": 32})(images=image, return_tensors="pt")
    torch.testing.assert_close(siglip.preprocess([image])[0], expected["pixel_values"][0])


def test_unsupported_families_are_named(tmp_path):
    transformers.BeitConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(TimmBackboneError, match="'beit' model; hf_vision reads CLIP, DINOv2"):
        HFVisionViT(str(tmp_path))


# --- checkpoints of these families in the timm backbone --------------------------------------------------


def test_timm_backbone_reads_an_open_clip_checkpoint(folders):
    folder = folders[1]["openai"]
    checkpoint = pathlib.Path(folder) / "open_clip_pytorch_model.bin"
    backbone = TimmViT(
        "vit_base_patch16_clip_quickgelu_224",
        checkpoint=checkpoint,
        img_size=32,
        model_kwargs={"patch_size": 8, "depth": 3, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2.0,
                      "num_classes": 16},
    )
    x = _images(2, 32)
    blocks, _ = _open_clip_blocks(folder, x)
    with torch.no_grad():
        for layer, expected in enumerate(blocks):
            torch.testing.assert_close(backbone.forward_to(x, layer), expected, **TOL)


def _as_torch_hub_dinov2(model) -> dict[str, torch.Tensor]:
    """The state dict of a Hugging Face DINOv2 under the names of the facebookresearch/dinov2 torch-hub model."""
    names = {
        "embeddings.cls_token": "cls_token",
        "embeddings.mask_token": "mask_token",
        "embeddings.register_tokens": "register_tokens",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection": "patch_embed.proj",
        "encoder.layer.": "blocks.",
        "attention.output.dense": "attn.proj",
        "layer_scale1.lambda1": "ls1.gamma",
        "layer_scale2.lambda1": "ls2.gamma",
        "layernorm.": "norm.",
    }
    state, qkv = {}, {}
    for key, value in model.state_dict().items():
        for old, new in names.items():
            key = key.replace(old, new)
        if ".attention.attention." in key:
            block, rest = key.split(".attention.attention.")
            part, kind = rest.split(".")
            qkv.setdefault((block, kind), {})[part] = value
            continue
        state[key] = value.reshape(1, -1) if key == "mask_token" else value
    for (block, kind), parts in qkv.items():
        state[f"{block}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return state


@pytest.mark.parametrize("family", ["dinov2", "dinov2_registers"])
def test_timm_backbone_reads_a_dinov2_torch_hub_checkpoint(folders, family, tmp_path):
    folder = folders[0][family]
    model, out = _hf_outputs(folder, family, x := _images(2, 48))
    torch.save(_as_torch_hub_dinov2(model), tmp_path / "hub.pth")
    registers = family == "dinov2_registers"
    backbone = TimmViT(
        "vit_small_patch14_reg4_dinov2" if registers else "vit_small_patch14_dinov2",
        checkpoint=tmp_path / "hub.pth",
        img_size=48,  # the checkpoint's own size: timm resamples the position embedding otherwise
        model_kwargs={"patch_size": 8, "depth": 3, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2.0,
                      **({"reg_tokens": 2} if registers else {})},
    )
    with torch.no_grad():
        for layer in range(3):
            torch.testing.assert_close(backbone.forward_to(x, layer), out.hidden_states[layer + 1], **TOL)


def _hub_interpolate_pos_encoding(pos_embed, w, h, patch_size):
    """facebookresearch/dinov2's ``DinoVisionTransformer.interpolate_pos_encoding`` with its defaults for the
    models without registers (``interpolate_offset=0.1``, ``interpolate_antialias=False``), transcribed."""
    N = pos_embed.shape[1] - 1
    pos_embed = pos_embed.float()
    class_pos_embed, patch_pos_embed = pos_embed[:, 0], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0, h0 = w // patch_size, h // patch_size
    M = int(math.sqrt(N))
    sx, sy = float(w0 + 0.1) / M, float(h0 + 0.1) / M
    patch_pos_embed = torch.nn.functional.interpolate(
        patch_pos_embed.reshape(1, M, M, dim).permute(0, 3, 1, 2), mode="bicubic", antialias=False,
        scale_factor=(sx, sy),
    )
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def test_a_dinov2_hub_checkpoint_at_another_size_has_the_hubs_position_embedding(folders, tmp_path):
    folder = folders[0]["dinov2"]
    model = transformers.Dinov2Model.from_pretrained(folder).eval()
    torch.save(_as_torch_hub_dinov2(model), tmp_path / "hub.pth")
    # The hub model at 32 pixels: Hugging Face's modules with the hub's interpolation of the 6x6 grid to 4x4.
    embeddings = model.embeddings
    embeddings.interpolate_pos_encoding = lambda tokens, h, w: _hub_interpolate_pos_encoding(
        embeddings.position_embeddings, h, w, 8
    )
    x = _images(2, 32)
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
        kwargs = {"patch_size": 8, "depth": 3, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2.0}
        backbone = TimmViT("vit_small_patch14_dinov2", checkpoint=tmp_path / "hub.pth", img_size=32, model_kwargs=kwargs)
        for layer in range(3):
            torch.testing.assert_close(backbone.forward_to(x, layer), out.hidden_states[layer + 1], **TOL)
        # Hugging Face's own DINOv2 interpolates otherwise: the two are different models at this size.
        hf = HFVisionViT(folder, img_size=32).forward_to(x, 0)
        assert (hf - backbone.forward_to(x, 0)).abs().max() > 1e-3


# --- params and discovery --------------------------------------------------------------------------------


def test_params_are_checked_before_any_library_is_imported(tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    assert OpenClipParams(model="ViT-B-16", pretrained="openai").force_quick_gelu is None
    with pytest.raises(ValueError, match="both set"):
        OpenClipParams(model="ViT-B-16", pretrained="openai", checkpoint=weights)
    with pytest.raises(ValueError, match="names its own weights"):
        OpenClipParams(model="hf-hub:org/repo", pretrained="openai")
    with pytest.raises(ValueError, match="no open_clip_config.json"):
        OpenClipParams(path=tmp_path)
    with pytest.raises(ValueError, match="give it as path"):
        OpenClipParams(model=f"local-dir:{tmp_path}")
    with pytest.raises(ValueError, match="exactly one of model"):
        OpenClipParams(model="ViT-B-16", path=tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        OpenClipParams(model="ViT-B-16", checkpoint=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="has no config.json"):
        HFVisionParams(path=tmp_path)
    with pytest.raises(ValueError, match="looks like a folder"):
        HFVisionParams(model=str(tmp_path))
    with pytest.raises(ValueError, match="exactly one of model"):
        HFVisionParams()
    assert HFVisionParams(model="facebook/dinov2-base", final_norm="last").model == "facebook/dinov2-base"
    with pytest.raises(ValueError, match="final_norm"):
        HFVisionParams(model="facebook/dinov2-base", final_norm="first")
    with pytest.raises(ValueError, match="Extra inputs"):
        HFVisionParams(model="facebook/dinov2-base", layer=3)


def test_registration_imports_no_model_library():
    code = (
        "import sys, cafe_timm.plugin, cafe_timm.params; "
        "assert not {'torch', 'timm', 'open_clip', 'transformers'} & set(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.filterwarnings("ignore:cafe plugin:RuntimeWarning")
def test_backbones_are_discovered_through_entry_points(folders):
    registry = PluginHost().registry("backbone")
    assert registry.get("open_clip").plugin == registry.get("hf_vision").plugin == "timm"
    built = registry.get("hf_vision").build({"path": folders[0]["vit"], "img_size": 32})
    assert isinstance(built, HFVisionViT)
