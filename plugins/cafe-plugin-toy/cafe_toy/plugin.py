"""Registers the default ViT and its SAEs (imports nothing heavy)."""

from cafe_core import hookimpl

from .params import ToySAEParams


@hookimpl
def cafe_register_backbones(register):
    """Register ``toy_vit``."""
    register(
        "toy_vit",
        "cafe_toy.components:toy_vit",
        description="cafe's default: a 4-block ViT trained on 32x32 shapes (weights shipped)",
    )


@hookimpl
def cafe_register_saes(register):
    """Register ``toy_sae``."""
    register(
        "toy_sae",
        "cafe_toy.components:toy_sae",
        params=ToySAEParams,
        description="ReLU SAEs trained on the default ViT's tokens (layers 0, 2, 3; class token at 3)",
    )
