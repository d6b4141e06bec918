"""cafe attributors from zennit's LRP composites, for timm ResNets and ConvNeXts.

Importing this package is cheap: zennit, timm and torch load only when a run builds an attributor
(:mod:`cafe_zennit.attributor`).
"""

__version__ = "0.1.0"
