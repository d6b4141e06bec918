"""Registration of the baseline attributors (imports nothing heavy; the components load on first use)."""

from __future__ import annotations

from cafe_core import hookimpl

from .params import GradientXInputParams


@hookimpl
def cafe_register_attributors(register):
    """Register ``activation_map`` and ``gradient_x_input``."""
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
