"""The default model's architecture and where its shipped weights live (imports nothing heavy)."""

from __future__ import annotations

import pathlib

__all__ = ["IMAGE_SIZE", "MODEL", "MODEL_KWARGS", "SAE_FILES", "WEIGHTS", "sae_path", "vit_path"]

MODEL = "vit_tiny_patch16_224"
"""The timm architecture family; :data:`MODEL_KWARGS` sets its size."""

MODEL_KWARGS = {"patch_size": 4, "embed_dim": 128, "depth": 4, "num_heads": 4, "num_classes": 4}
IMAGE_SIZE = 32

WEIGHTS = pathlib.Path(__file__).resolve().parent / "weights"

SAE_FILES = {
    (0, "patch"): "sae_layer0_patch.safetensors",
    (2, "patch"): "sae_layer2_patch.safetensors",
    (3, "patch"): "sae_layer3_patch.safetensors",
    (3, "cls"): "sae_layer3_cls.safetensors",
}
"""The shipped SAEs, by (layer, tokens)."""


def vit_path() -> pathlib.Path:
    """The ViT's weights (float16 safetensors)."""
    return WEIGHTS / "vit.safetensors"


def sae_path(layer: int, tokens: str) -> pathlib.Path:
    """The shipped SAE of a layer and token set.

    Raises
    ------
    KeyError
        With the available (layer, tokens) pairs.
    """
    try:
        return WEIGHTS / SAE_FILES[(layer, tokens)]
    except KeyError:
        available = ", ".join(f"layer {layer_} / {tokens_!r}" for layer_, tokens_ in SAE_FILES)
        raise KeyError(f"no shipped SAE for layer {layer} and tokens {tokens!r}; available: {available}") from None
