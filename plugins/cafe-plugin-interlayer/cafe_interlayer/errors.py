"""The interlayer plugin's error."""

from __future__ import annotations

from cafe_core.errors import CafeError

__all__ = ["InterlayerError"]


class InterlayerError(CafeError):
    """An interlayer attribution or concept graph cannot be made; the message names the cause and the fix."""
