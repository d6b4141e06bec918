"""cafe backbone plugin for timm Vision Transformers, ResNets and ConvNeXts.

Importing this package is cheap: timm and torch load only when a run builds the backbone
(:class:`cafe_timm.vit.TimmViT`, :class:`cafe_timm.conv.TimmConvNet`).
"""

__version__ = "0.1.0"
