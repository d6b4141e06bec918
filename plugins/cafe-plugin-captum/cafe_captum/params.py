"""Parameter models of the Captum attributors (pydantic only: importing this module does not load Captum)."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cafe_core.batching import Batching, PathBatching
from cafe_core.blank_names import Blank, BlurSigma
from cafe_core.spec import renamed_key

__all__ = [
    "GradientShapParams",
    "IntegratedGradientsParams",
    "IntegrationMethod",
    "PathStart",
    "Quantity",
    "RIEMANN_METHODS",
    "SaliencyParams",
]

IntegrationMethod = Literal["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"]
Quantity = Literal["post", "pre"]
PathStart = Literal["onset", "blank"]

RIEMANN_METHODS = tuple(m for m in get_args(IntegrationMethod) if m.startswith("riemann_"))
"""Captum's Riemann rules, which need at least two steps."""


class IntegratedGradientsParams(BaseModel):
    """Parameters of :class:`cafe_captum.integrated_gradients.IntegratedGradients`.

    Attributes
    ----------
    n_steps : int
        Points of the path integral (at least 1; at least 2 for the Riemann rules).
    method : str
        Captum's quadrature rule: ``"gausslegendre"`` or ``"riemann_{trapezoid,left,right,middle}"``.
    blank : {"zeros", "mean", "blur"} or "module:function"
        Where the path starts, the same images as the insertion test's blank: a zero model input, the
        image's per-channel mean colour, or a Gaussian blur of the image (written ``baseline`` before; that
        key is still read, with a deprecation warning).
    blur_sigma : float or None
        Blur standard deviation in pixels for ``blank="blur"``; ``None`` means a tenth of the smaller
        image side.
    quantity : {"post", "pre"}
        Integrate the latent ``z`` itself (``"post"``) or its pre-activation (``"pre"``).
    start : {"onset", "blank"}
        Where the path of ``quantity="post"`` starts: where the latent turns on along the line from the blank
        (``"onset"``, the default: the integrand is then smooth and the heatmap converges in few steps) or at
        the blank (``"blank"``, Captum's path, slow across the ReLU's kink).
    batching : {"auto", "rows", "shared"}
        How the latents of one image share the points of identical paths
        (:func:`cafe_core.path_gradients.path_groups`).
    """

    model_config = ConfigDict(extra="forbid")

    n_steps: int = Field(32, ge=1)
    method: IntegrationMethod = "gausslegendre"
    blank: Blank = "zeros"
    blur_sigma: BlurSigma | None = None
    quantity: Quantity = "post"
    start: PathStart = "onset"
    batching: PathBatching = "auto"

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, data: Any) -> Any:
        return renamed_key(data, "baseline", "blank", "integrated_gradients")

    @model_validator(mode="after")
    def _riemann_needs_two_steps(self) -> "IntegratedGradientsParams":
        if self.method in RIEMANN_METHODS and self.n_steps < 2:
            raise ValueError(f"method {self.method!r} needs n_steps >= 2, got {self.n_steps}")
        return self


class SaliencyParams(BaseModel):
    """Parameters of :class:`cafe_captum.saliency.Saliency`.

    Attributes
    ----------
    abs : bool
        Take ``|dz/dx|`` element-wise before summing over channels and patches.
    batching : {"auto", "rows", "shared", "jacobian"}
        How the latents of one image share work (:func:`cafe_core.gradients.input_gradients`).
    """

    model_config = ConfigDict(extra="forbid")

    abs: bool = True
    batching: Batching = "auto"


class InputXGradientParams(BaseModel):
    """Parameters of :class:`cafe_captum.input_x_gradient.InputXGradient`.

    Attributes
    ----------
    batching : {"auto", "rows", "shared", "jacobian"}
        How the latents of one image share work (:func:`cafe_core.gradients.input_gradients`).
    """

    model_config = ConfigDict(extra="forbid")

    batching: Batching = "auto"


class GradientShapParams(BaseModel):
    """Parameters of :class:`cafe_captum.gradient_shap.GradientShap`.

    Attributes
    ----------
    n_samples : int
        Random points per heatmap (at least 1).
    stdevs : float
        Standard deviation of the Gaussian noise added to the input at every sample (model-input units).
    blank : {"zeros", "mean", "blur"} or "module:function"
        The reference each sample interpolates from, the same images as the insertion test's blank (written
        ``baseline`` before; that key is still read, with a deprecation warning).
    blur_sigma : float or None
        Blur standard deviation in pixels for ``blank="blur"``.
    batching : {"auto", "rows", "shared"}
        How the latents of one image share its sampled points (:func:`cafe_core.path_gradients.path_groups`).
    """

    model_config = ConfigDict(extra="forbid")

    n_samples: int = Field(16, ge=1)
    stdevs: float = Field(0.0, ge=0)
    blank: Blank = "zeros"
    blur_sigma: BlurSigma | None = None
    batching: PathBatching = "auto"

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, data: Any) -> Any:
        return renamed_key(data, "baseline", "blank", "gradient_shap")
