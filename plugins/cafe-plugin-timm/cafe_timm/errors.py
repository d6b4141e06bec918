"""The error this plugin raises for invalid settings, inputs and checkpoints."""

from __future__ import annotations

from cafe_core.errors import CafeError

__all__ = ["TimmBackboneError"]


class TimmBackboneError(CafeError, ValueError):
    """A timm backbone could not be built or used; the message names the cause and the fix.

    It is a :class:`ValueError` too, so that pydantic reports it as a validation problem of the params.
    """
