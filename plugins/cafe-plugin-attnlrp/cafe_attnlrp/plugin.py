"""Registration of AttnLRP and CP-LRP (imports nothing heavy; the components load on first use)."""

from __future__ import annotations

from cafe_core import hookimpl

from .params import LRPParams


@hookimpl
def cafe_register_attributors(register):
    """Register ``attnlrp`` and ``cp_lrp``."""
    register(
        "attnlrp",
        "cafe_attnlrp.attributor:AttnLRP",
        params=LRPParams,
        description="Attention-aware LRP through the SAE encoder and the ViT blocks (timm, open_clip, HF ViTs)",
    )
    register(
        "cp_lrp",
        "cafe_attnlrp.attributor:CPLRP",
        params=LRPParams,
        description="Conservative LRP (attention weights held constant) through the SAE encoder and ViT blocks",
    )
