"""Parameters of the default components."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from .assets import SAE_FILES

__all__ = ["ToySAEParams"]


class ToySAEParams(BaseModel):
    """Which shipped SAE: the block it reads and its tokens.

    Attributes
    ----------
    layer : int
        0 (early), 2 (middle) or 3 (late) for patch tokens; 3 for the class token.
    site : {"patch", "cls"}
        Patch tokens or the class token.
    """

    model_config = ConfigDict(extra="forbid")

    layer: int = 3
    site: Literal["patch", "cls"] = "patch"

    @model_validator(mode="after")
    def _shipped(self) -> "ToySAEParams":
        if (self.layer, self.site) not in SAE_FILES:
            available = ", ".join(f"(layer={layer}, site={site!r})" for layer, site in SAE_FILES)
            raise ValueError(f"no shipped SAE for layer={self.layer}, site={self.site!r}; available: {available}")
        return self
