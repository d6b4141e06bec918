"""Names of blanks and their blur, as params field types validated without importing torch."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

__all__ = ["BLANKS", "Blank", "BlurSigma", "check_blank"]

BLANKS = ("zeros", "mean", "blur")
"""The kinds of blank :func:`cafe_core.blanks.make_blank` knows."""


def check_blank(kind: str) -> str:
    """Return ``kind`` if it is one of :data:`BLANKS` or a ``"module:function"`` reference.

    Raises ``ValueError`` naming the choices otherwise.
    """
    module, _, attr = str(kind).partition(":")
    if kind in BLANKS or (module and attr):
        return kind
    raise ValueError(
        f"unknown blank {kind!r}; use 'zeros', 'mean', 'blur', or 'module:function' naming a function that "
        "maps model inputs x [B, C, H, W] to their blanks"
    )


Blank = Annotated[str, AfterValidator(check_blank)]
"""A params field type for blanks: validated by :func:`check_blank`."""

BlurSigma = Annotated[float, Field(gt=0, allow_inf_nan=False)]
"""A params field type for the blur standard deviation in pixels: a finite number > 0 (use ``BlurSigma | None``
for a field whose ``None`` means the default of :func:`cafe_core.blanks.make_blank`)."""
