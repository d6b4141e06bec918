"""Parameter models of the cause-patch and non-locality metrics."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CausePatchesParams", "NonlocalMassParams"]


class CausePatchesParams(BaseModel):
    """Parameters of :class:`cafe_faithfulness.cause.CausePatches`.

    Attributes
    ----------
    share : float
        Share of the positive relevance the cause patches hold, in ``(0, 1]`` (default 0.5).
    top_k : int or None
        A fixed number of patches instead of ``share``.
    """

    model_config = ConfigDict(extra="forbid")

    share: float = Field(0.5, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)


class NonlocalMassParams(BaseModel):
    """Parameters of :class:`cafe_faithfulness.nonlocality.NonlocalMass`.

    Attributes
    ----------
    radius : int
        Rows and columns around the fired patch that belong to its neighbourhood (0: the patch alone;
        default 1: the 3x3 square around it).
    """

    model_config = ConfigDict(extra="forbid")

    radius: int = Field(1, ge=0)
