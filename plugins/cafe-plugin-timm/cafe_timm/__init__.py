"""cafe backbone plugin for timm Vision Transformers.

Importing this package is cheap: timm and torch load only when a run builds the backbone
(:class:`cafe_timm.vit.TimmViT`).
"""

__version__ = "0.1.0"
