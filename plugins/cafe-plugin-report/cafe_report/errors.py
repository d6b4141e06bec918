"""The report plugin's error."""

from __future__ import annotations

from cafe_core.errors import CafeError

__all__ = ["ReportError"]


class ReportError(CafeError):
    """A report, feature page or analysis cannot be made; the message names the cause and the fix."""
