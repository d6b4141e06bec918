"""Entry point of the plugin: registers the ``timm`` and ``timm_conv`` backbones without importing timm or torch."""

from __future__ import annotations

from cafe_core import hookimpl

from .params import TimmConvParams, TimmParams


@hookimpl
def cafe_register_backbones(register):
    """Register :class:`cafe_timm.vit.TimmViT` as ``timm`` (alias ``timm_vit``) and
    :class:`cafe_timm.conv.TimmConvNet` as ``timm_conv``."""
    register(
        "timm",
        "cafe_timm.vit:TimmViT",
        params=TimmParams,
        aliases=("timm_vit",),
        description="Any timm VisionTransformer (class/register tokens, any patch and image size)",
    )
    register(
        "timm_conv",
        "cafe_timm.conv:TimmConvNet",
        params=TimmConvParams,
        description="timm ResNet and ConvNeXt, read stage by stage (a token is a position of the stage's map)",
    )
