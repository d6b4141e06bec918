"""Names of blanks, validated without importing torch (so plugin params can use them cheaply)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

__all__ = ["BLANKS", "Blank", "check_blank"]

BLANKS = ("zeros", "mean", "blur")
"""The kinds of blank :func:`cafe_core.blanks.make_blank` knows."""


def check_blank(kind: str) -> str:
    """Validate a blank: one of :data:`BLANKS` or a ``"module:function"`` reference (raises ``ValueError``)."""
    module, _, attr = str(kind).partition(":")
    if kind in BLANKS or (module and attr):
        return kind
    raise ValueError(
        f"unknown blank {kind!r}; use 'zeros', 'mean', 'blur', or 'module:function' naming a function that "
        "maps model inputs x [B, C, H, W] to their blanks"
    )


Blank = Annotated[str, AfterValidator(check_blank)]
"""A params field type for blanks: validated by :func:`check_blank`."""
