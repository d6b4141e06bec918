"""Parameter model shared by the insertion and deletion metrics."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cafe_core.blank_names import Blank, BlurSigma

__all__ = ["PatchCurveParams"]


class PatchCurveParams(BaseModel):
    """Parameters of :class:`cafe_faithfulness.curves.Insertion` and :class:`~cafe_faithfulness.curves.Deletion`.

    Attributes
    ----------
    steps : int
        Patches inserted or removed between two points of the curve (at least 1).
    blank : {"zeros", "blur", "mean"}
        What a missing patch shows: a zero model input, a Gaussian blur of the image, or the image's
        per-channel mean colour.
    blur_sigma : float or None
        Standard deviation of the blur in pixels; ``None`` means a tenth of the smaller image side.
    clip : bool
        Clamp the normalised curve to ``[0, 1]`` before taking its area.
    resolution : {"full", "adaptive"}
        ``"full"`` evaluates every point; ``"adaptive"`` a coarse grid refined by bisection until the bound on
        the area's error is at most ``tolerance`` (the bound assumes the curve is monotone between evaluated
        points; see :mod:`cafe_faithfulness.adaptive`).
    tolerance : float
        For ``"adaptive"``: the largest bound on the area's error, in the score's units (at least 0).
    initial_stride : int
        For ``"adaptive"``: spacing, in points of the curve, of the first evaluated grid (at least 1).
    """

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(1, ge=1)
    blank: Blank = "zeros"
    blur_sigma: BlurSigma | None = None
    clip: bool = True
    resolution: Literal["full", "adaptive"] = "full"
    tolerance: float = Field(0.01, ge=0, allow_inf_nan=False)
    initial_stride: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _adaptive_settings_need_adaptive(self) -> "PatchCurveParams":
        stray = sorted({"tolerance", "initial_stride"} & self.model_fields_set)
        if stray and self.resolution != "adaptive":
            raise ValueError(f"{' and '.join(stray)} only apply with resolution = \"adaptive\"")
        return self
