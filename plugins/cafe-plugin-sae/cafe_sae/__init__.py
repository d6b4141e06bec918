"""ReLU and TopK sparse autoencoders for cafe, stored as single safetensors files.

Public API::

    from cafe_sae import ReluSAE, TopKSAE, save, load
    sae = ReluSAE.random_init(768, 24576, seed=0, layer=10)
    save(sae, "sae.safetensors")
    sae = load("sae.safetensors")

Importing this package is cheap: torch and safetensors load only when one of these names is first used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "BaseSAE",
    "ReluSAE",
    "SAEConfigError",
    "SAEFileError",
    "SAELoss",
    "TopKSAE",
    "load",
    "save",
    "__version__",
]

_LAZY = {
    "BaseSAE": ("cafe_sae.base", "BaseSAE"),
    "SAELoss": ("cafe_sae.base", "SAELoss"),
    "ReluSAE": ("cafe_sae.relu", "ReluSAE"),
    "TopKSAE": ("cafe_sae.topk", "TopKSAE"),
    "load": ("cafe_sae.io", "load"),
    "save": ("cafe_sae.io", "save"),
    "SAEConfigError": ("cafe_sae.errors", "SAEConfigError"),
    "SAEFileError": ("cafe_sae.errors", "SAEFileError"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        return getattr(importlib.import_module(module_name), attr)
    raise AttributeError(f"module 'cafe_sae' has no attribute {name!r}")
