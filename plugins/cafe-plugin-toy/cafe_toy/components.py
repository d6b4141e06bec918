"""Build the default ViT and its SAEs from the shipped weights."""

from __future__ import annotations

from typing import Any

from .assets import IMAGE_SIZE, MODEL, MODEL_KWARGS, sae_path, vit_path

__all__ = ["toy_sae", "toy_vit"]


def toy_vit() -> Any:
    """The default ViT (a :class:`cafe_timm.vit.TimmViT`) with its trained weights."""
    from cafe_timm.vit import TimmViT

    return TimmViT(MODEL, img_size=IMAGE_SIZE, model_kwargs=MODEL_KWARGS, checkpoint=vit_path())


def toy_sae(layer: int = 3, tokens: str = "patch") -> Any:
    """A shipped SAE of the default ViT (frozen)."""
    from cafe_sae.loading import load_file

    return load_file(sae_path(layer, tokens), layer=layer, tokens=tokens)
