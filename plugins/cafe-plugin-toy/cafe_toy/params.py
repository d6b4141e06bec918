"""Parameters of the default components."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from cafe_sae.params import move_deprecated_site

from .assets import SAE_FILES

__all__ = ["ToySAEParams"]


class ToySAEParams(BaseModel):
    """Which shipped SAE: the block it reads and its tokens.

    Attributes
    ----------
    layer : int
        0 (early), 2 (middle) or 3 (late) for patch tokens; 3 for the class token.
    tokens : {"patch", "cls"}
        Patch tokens or the class token (``site``, the old name of this param, still works with a
        DeprecationWarning).
    """

    model_config = ConfigDict(extra="forbid")

    layer: int = 3
    tokens: Literal["patch", "cls"] = "patch"

    @model_validator(mode="before")
    @classmethod
    def _deprecated_site(cls, data: Any) -> Any:
        return move_deprecated_site(data, "toy_sae param")

    @model_validator(mode="after")
    def _shipped(self) -> "ToySAEParams":
        if (self.layer, self.tokens) not in SAE_FILES:
            available = ", ".join(f"(layer={layer}, tokens={tokens!r})" for layer, tokens in SAE_FILES)
            raise ValueError(f"no shipped SAE for layer={self.layer}, tokens={self.tokens!r}; available: {available}")
        return self
