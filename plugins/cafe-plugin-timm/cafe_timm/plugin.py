"""Entry point of the plugin: registers the backbones without importing timm, torch or any model library."""

from __future__ import annotations

from cafe_core import hookimpl

from .params import HFVisionParams, OpenClipParams, TimmConvParams, TimmParams


@hookimpl
def cafe_register_backbones(register):
    """Register :class:`cafe_timm.vit.TimmViT` as ``timm`` (alias ``timm_vit``),
    :class:`cafe_timm.conv.TimmConvNet` as ``timm_conv``, :class:`cafe_timm.open_clip_vit.OpenClipViT` as
    ``open_clip`` and :class:`cafe_timm.hf_vit.HFVisionViT` as ``hf_vision``."""
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
    register(
        "open_clip",
        "cafe_timm.open_clip_vit:OpenClipViT",
        params=OpenClipParams,
        aliases=("openclip",),
        description="The ViT vision tower of an open_clip model (CLIP, SigLIP...), as open_clip computes it",
    )
    register(
        "hf_vision",
        "cafe_timm.hf_vit:HFVisionViT",
        params=HFVisionParams,
        aliases=("huggingface_vision",),
        description="A Hugging Face CLIP, DINOv2, SigLIP or ViT vision encoder, as transformers computes it",
    )
