"""Entry point of the plugin: registers the ``timm`` backbone without importing timm or torch."""

from __future__ import annotations

from cafe_core import hookimpl

from .params import TimmParams


@hookimpl
def cafe_register_backbones(register):
    """Register :class:`cafe_timm.vit.TimmViT` as ``timm`` (alias ``timm_vit``)."""
    register(
        "timm",
        "cafe_timm.vit:TimmViT",
        params=TimmParams,
        aliases=("timm_vit",),
        description="Any timm VisionTransformer (class/register tokens, any patch and image size)",
    )
