"""cafe backbone plugin for Vision Transformers (timm, open_clip, Hugging Face), ResNets and ConvNeXts.

Importing this package is cheap: timm, torch, open_clip and transformers load only when a run builds the
backbone (:class:`cafe_timm.vit.TimmViT`, :class:`cafe_timm.open_clip_vit.OpenClipViT`,
:class:`cafe_timm.hf_vit.HFVisionViT`, :class:`cafe_timm.conv.TimmConvNet`).
"""

__version__ = "0.1.0"
