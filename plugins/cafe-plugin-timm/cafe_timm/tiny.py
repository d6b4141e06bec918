"""Tiny random-weight models of every family the ViT backbones read, saved as each library saves them.

Each is built from the library's own configuration classes (no download) with 2-3 blocks, width 32 and 8x8
patches, and every parameter (biases, norms, class and register tokens, layer scales) is given a non-trivial
random value, so that tests and offline examples exercise every part of the computation. The functions
return the backbone params that read the saved model.

Families: :data:`OPEN_CLIP_VARIANTS` for :func:`save_open_clip`, :data:`HF_FAMILIES` for :func:`save_hf`.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import torch
from torch import nn

__all__ = ["HF_FAMILIES", "OPEN_CLIP_VARIANTS", "randomise", "save_hf", "save_open_clip"]

WIDTH, HEADS, PATCH, IMAGE = 32, 2, 8, 32

# name -> the vision_cfg / model_cfg entries of an open_clip config that make the variant.
OPEN_CLIP_VARIANTS: dict[str, dict[str, Any]] = {
    "openai": {"quick_gelu": True},  # OpenAI CLIP: QuickGELU, ln_pre, class token
    "layer_scale": {"vision_cfg": {"ls_init_value": 0.1}},  # GELU with layer scale
    "no_ln_pre": {"vision_cfg": {"no_ln_pre": True}},
    # A tower open_clip builds from timm, as its SigLIP models: timm's smallest test ViT with an attention-pool
    # head reading a register token too (9 blocks of width 96, 160 pixels).
    "timm_tower": {"vision_cfg": {"timm_model_name": "test_vit3", "timm_pool": "map", "timm_proj": "none",
                                  "image_size": 160}},
}

# family -> (transformers config class, model class, config kwargs)
HF_FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "clip": ("CLIPVisionConfig", "CLIPVisionModel", {"intermediate_size": 64, "image_size": IMAGE}),
    "dinov2": ("Dinov2Config", "Dinov2Model", {"image_size": 48, "mlp_ratio": 2.0}),
    "dinov2_registers": (
        "Dinov2WithRegistersConfig",
        "Dinov2WithRegistersModel",
        {"image_size": 48, "mlp_ratio": 2.0, "num_register_tokens": 2},
    ),
    "siglip": ("SiglipVisionConfig", "SiglipVisionModel", {"intermediate_size": 64, "image_size": IMAGE}),
    "vit": ("ViTConfig", "ViTModel", {"intermediate_size": 64, "image_size": IMAGE}),
}


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter a seeded random value: norm scales near 1, other vectors and tokens of size 0.2,
    matrices scaled by their fan-in."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for owner in module.modules():
            for name, p in owner.named_parameters(recurse=False):
                noise = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p)
                if isinstance(owner, nn.LayerNorm) and name == "weight":
                    p.copy_(1 + 0.2 * noise)
                elif p.dim() <= 1 or p.shape[-1] == p.numel() or "token" in name or "embed" in name:
                    p.copy_(0.2 * noise)
                else:
                    p.copy_(noise / p[0].numel() ** 0.5)
    return module


def save_open_clip(folder: pathlib.Path | str, variant: str = "openai", *, depth: int = 3, seed: int = 0) -> str:
    """Save a tiny open_clip model of ``variant`` (:data:`OPEN_CLIP_VARIANTS`) as open_clip saves a model
    folder (``open_clip_config.json`` + ``open_clip_pytorch_model.bin``).

    Returns
    -------
    str
        The folder: the ``open_clip`` backbone's ``path``, open_clip's ``"local-dir:<folder>"``.
    """
    import open_clip

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    extra = OPEN_CLIP_VARIANTS[variant]
    vision = extra.get("vision_cfg", {})
    if "timm_model_name" not in vision:
        vision = {"image_size": IMAGE, "layers": depth, "width": WIDTH, "head_width": WIDTH // HEADS,
                  "patch_size": PATCH, "mlp_ratio": 2.0, **vision}
    text = {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}
    config = {
        "model_cfg": {"embed_dim": 16, "vision_cfg": vision, "text_cfg": text,
                      **{k: v for k, v in extra.items() if k != "vision_cfg"}},
        "preprocess_cfg": {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False)
    randomise(model.visual, seed)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return str(folder)


def save_hf(folder: pathlib.Path | str, family: str, *, depth: int = 3, seed: int = 0, **config: Any) -> str:
    """Save a tiny ``transformers`` model of ``family`` (:data:`HF_FAMILIES`) with ``save_pretrained``.

    ``config`` overrides entries of the model's configuration (``use_swiglu_ffn=True``...). No image
    processor is saved: the backbone then uses the family's default one.

    Returns
    -------
    str
        The folder: the ``hf_vision`` backbone's ``path``.
    """
    import transformers

    config_name, model_name, kwargs = HF_FAMILIES[family]
    settings = {"hidden_size": WIDTH, "num_hidden_layers": depth, "num_attention_heads": HEADS,
                "patch_size": PATCH, **kwargs, **config}
    model = getattr(transformers, model_name)(getattr(transformers, config_name)(**settings))
    randomise(model, seed)
    model.save_pretrained(folder)
    return str(folder)
