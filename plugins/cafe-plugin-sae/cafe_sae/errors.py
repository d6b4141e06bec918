"""Errors of the SAE plugin; each message names the file, the problem and the fix."""

from __future__ import annotations

from cafe_core.errors import CafeError

__all__ = ["SAEConfigError", "SAEFileError"]


class SAEFileError(CafeError, ValueError):
    """An SAE checkpoint cannot be read: missing, corrupt, incomplete or inconsistent."""


class SAEConfigError(CafeError, ValueError):
    """The params of an SAE contradict its checkpoint (layer, site, tokens, architecture, k...), lack what the
    checkpoint cannot hold, or do not apply to it."""
