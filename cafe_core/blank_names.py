"""Names of blanks, validated without importing torch (so plugin params can use them cheaply)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

__all__ = ["BLANKS", "Blank", "check_blank"]

BLANKS = ("zeros", "mean", "blur")
"""The kinds of blank :func:`cafe_core.blanks.make_blank` knows."""


def check_blank(kind: str, blur_sigma: float | None = None) -> str:
    """Validate a blank: one of :data:`BLANKS` or a ``"module:function"`` reference, and its blur sigma.

    Raises ``ValueError`` for an unknown blank or a ``blur_sigma`` that is not positive.
    """
    if blur_sigma is not None and not blur_sigma > 0:
        raise ValueError(f"blur_sigma must be positive, got {blur_sigma}")
    module, _, attr = str(kind).partition(":")
    if kind in BLANKS or (module and attr):
        return kind
    raise ValueError(
        f"unknown blank {kind!r}; use 'zeros', 'mean', 'blur', or 'module:function' naming a function that "
        "maps model inputs x [B, C, H, W] to their blanks"
    )


Blank = Annotated[str, AfterValidator(check_blank)]
"""A params field type for blanks: validated by :func:`check_blank`."""
