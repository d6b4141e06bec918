"""Registration of the Captum attributors (imports neither Captum nor torch; they load on first use)."""

from __future__ import annotations

from cafe_core import hookimpl

from .params import GradientShapParams, InputXGradientParams, IntegratedGradientsParams, SaliencyParams


@hookimpl
def cafe_register_attributors(register):
    """Register ``integrated_gradients``, ``saliency``, ``input_x_gradient`` and ``gradient_shap``."""
    register(
        "integrated_gradients",
        "cafe_captum.integrated_gradients:IntegratedGradients",
        params=IntegratedGradientsParams,
        description="Integrated gradients of the latent (or its pre-activation) from a blank image",
    )
    register(
        "saliency",
        "cafe_captum.saliency:Saliency",
        params=SaliencyParams,
        description="Magnitude of the latent's input gradient, summed within each patch",
    )
    register(
        "input_x_gradient",
        "cafe_captum.input_x_gradient:InputXGradient",
        params=InputXGradientParams,
        description="Input times the latent's gradient (as Captum's), summed within each patch",
    )
    register(
        "gradient_shap",
        "cafe_captum.gradient_shap:GradientShap",
        params=GradientShapParams,
        description="GradientSHAP: expected input-minus-blank times gradient at random path points",
    )
