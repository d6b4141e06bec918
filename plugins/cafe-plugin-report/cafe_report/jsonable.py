"""Plain data for JSON files: NaN and infinity become ``None`` (JSON has neither)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["finite"]


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by ``None`` and numpy scalars made Python numbers."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
