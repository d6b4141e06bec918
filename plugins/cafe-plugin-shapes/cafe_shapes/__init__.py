"""Procedurally generated images of coloured shapes whose label has known causes.

The public names are imported lazily, so that loading the plugin (which imports this package) does not
import numpy or torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "COLOURS",
    "PALETTE",
    "RULES",
    "SHAPES",
    "Scene",
    "ShapesDataset",
    "ShapesParams",
    "generate_scene",
    "patch_object_fraction",
    "patch_object_fractions",
]

_HOMES = {
    "COLOURS": "rules",
    "PALETTE": "draw",
    "SHAPES": "rules",
    "RULES": "rules",
    "Scene": "scene",
    "generate_scene": "scene",
    "ShapesDataset": "dataset",
    "ShapesParams": "params",
    "patch_object_fraction": "patches",
    "patch_object_fractions": "patches",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
