"""Parameter model shared by the insertion and deletion metrics."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

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
    """

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(1, ge=1)
    blank: Blank = "zeros"
    blur_sigma: BlurSigma | None = None
    clip: bool = True
