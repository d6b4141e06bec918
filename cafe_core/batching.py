"""The names of the ways gradient attributors batch many latents of one image (light: no torch import).

See :func:`cafe_core.gradients.input_gradients` for what each one does, and
:func:`cafe_core.path_gradients.path_gradients` for the methods that integrate gradients along a path.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["BATCHING", "Batching", "PATH_BATCHING", "PathBatching", "check_batching"]

Batching = Literal["auto", "rows", "shared", "jacobian"]
BATCHING: tuple[str, ...] = get_args(Batching)

PathBatching = Literal["auto", "rows", "shared"]
"""The choices of the path methods (integrated gradients, GradientSHAP): no per-token Jacobian there."""
PATH_BATCHING: tuple[str, ...] = get_args(PathBatching)


def check_batching(batching: str, choices: tuple[str, ...] = BATCHING) -> str:
    """Return ``batching`` if it is one of ``choices``; raise ``ValueError`` naming the choices otherwise."""
    if batching not in choices:
        raise ValueError(f"batching must be one of {', '.join(choices)}, got {batching!r}")
    return batching
