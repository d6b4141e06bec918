"""The names of the ways gradient attributors batch many latents of one image (light: no torch import).

See :func:`cafe_core.gradients.input_gradients` for what each one does.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["BATCHING", "Batching", "check_batching"]

Batching = Literal["auto", "rows", "shared", "jacobian"]
BATCHING: tuple[str, ...] = get_args(Batching)


def check_batching(batching: str) -> str:
    """Return ``batching`` if it is one of :data:`BATCHING`; raise ``ValueError`` naming the choices otherwise."""
    if batching not in BATCHING:
        raise ValueError(f"batching must be one of {', '.join(BATCHING)}, got {batching!r}")
    return batching
