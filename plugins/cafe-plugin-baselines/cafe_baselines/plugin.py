"""Registration of the baseline attributors (imports nothing heavy; the components load on first use)."""

from __future__ import annotations

from cafe_core import hookimpl

from .params import GradientXInputParams, OcclusionParams, RandomRankingParams


@hookimpl
def cafe_register_attributors(register):
    """Register ``activation_map``, ``gradient_x_input``, ``occlusion`` and ``random``."""
    register(
        "activation_map",
        "cafe_baselines.activation_map:ActivationMap",
        params=None,
        description="Activation of the latent at each patch token (where it fires, not what causes it)",
    )
    register(
        "gradient_x_input",
        "cafe_baselines.gradient_x_input:GradientXInput",
        params=GradientXInputParams,
        description="Input times the gradient of the latent, summed within each patch",
    )
    register(
        "occlusion",
        "cafe_baselines.occlusion:Occlusion",
        params=OcclusionParams,
        description="Drop of the latent when each patch alone is replaced by a blank (no gradients)",
    )
    register(
        "random",
        "cafe_baselines.random_ranking:RandomRanking",
        params=RandomRankingParams,
        description="Seeded random ranking of the patches: the floor of a faithfulness table",
    )
