"""Parameter model of the AttnLRP and CP-LRP attributors (the two take the same knobs)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from cafe_core.batching import Batching

__all__ = ["LRPParams"]


class LRPParams(BaseModel):
    """Parameters of :class:`cafe_attnlrp.attributor.AttnLRP` and :class:`cafe_attnlrp.attributor.CPLRP`.

    Attributes
    ----------
    gamma : float
        LRP-gamma for the ``Linear`` layers of the blocks (a finite number ``>= 0``); ``0`` is LRP-0.
    batching : {"auto", "rows", "shared", "jacobian"}
        How the latents of one image share work (the maps are the same); ``"auto"`` picks by the
        measured crossover.
    """

    model_config = ConfigDict(extra="forbid")

    gamma: float = Field(default=0.0, ge=0.0, allow_inf_nan=False, description="LRP-gamma of the Linear layers")
    batching: Batching = Field(default="auto", description="how the latents of one image share work")
