"""Parameter models of the baseline attributors."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["GradientXInputParams"]


class GradientXInputParams(BaseModel):
    """Parameters of :class:`cafe_baselines.gradient_x_input.GradientXInput`.

    Attributes
    ----------
    absolute : bool
        Take the absolute value of every element of ``x * grad`` before summing over channels and patches,
        so that opposite-signed pixels of one patch do not cancel.
    """

    model_config = ConfigDict(extra="forbid")

    absolute: bool = False
