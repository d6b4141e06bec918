"""Registration of the zennit attributors (imports nothing heavy; the components load on first use)."""

from __future__ import annotations

from cafe_core import hookimpl

from .params import EpsilonAlpha2Beta1Params, EpsilonGammaBoxParams, EpsilonPlusFlatParams, EpsilonPlusParams


@hookimpl
def cafe_register_attributors(register):
    """Register ``lrp_epsilon_plus_flat``, ``lrp_epsilon_gamma_box``, ``lrp_epsilon_plus`` and
    ``lrp_epsilon_alpha2_beta1``."""
    register(
        "lrp_epsilon_plus_flat",
        "cafe_zennit.attributor:EpsilonPlusFlatLRP",
        params=EpsilonPlusFlatParams,
        description="zennit EpsilonPlusFlat LRP (flat first layer, z+ convolutions) for timm ResNets and ConvNeXts",
    )
    register(
        "lrp_epsilon_gamma_box",
        "cafe_zennit.attributor:EpsilonGammaBoxLRP",
        params=EpsilonGammaBoxParams,
        description="zennit EpsilonGammaBox LRP (z-box first layer, gamma convolutions) for timm ResNets and ConvNeXts",
    )
    register(
        "lrp_epsilon_plus",
        "cafe_zennit.attributor:EpsilonPlusLRP",
        params=EpsilonPlusParams,
        description="zennit EpsilonPlus LRP (z+ convolutions) for timm ResNets and ConvNeXts",
    )
    register(
        "lrp_epsilon_alpha2_beta1",
        "cafe_zennit.attributor:EpsilonAlpha2Beta1LRP",
        params=EpsilonAlpha2Beta1Params,
        description="zennit EpsilonAlpha2Beta1 LRP (alpha=2, beta=1 convolutions) for timm ResNets and ConvNeXts",
    )
