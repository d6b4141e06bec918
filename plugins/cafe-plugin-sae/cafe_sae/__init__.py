"""Sparse autoencoders for cafe: ReLU, TopK, JumpReLU and gated SAEs, cafe's own single-file checkpoints, and
readers of the checkpoints of SAELens, saev, ViT-Prisma, dictionary_learning and overcomplete.

Public API::

    from cafe_sae import ReluSAE, TopKSAE, save, load, load_any
    sae = ReluSAE.random_init(768, 24576, seed=0, layer=10)
    save(sae, "sae.safetensors")
    sae = load("sae.safetensors")                       # cafe's format, trainable
    sae = load_any("saelens_folder/")                   # any supported format, frozen

Importing this package is cheap: torch and safetensors load only when one of these names is first used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "BaseSAE",
    "GatedSAE",
    "JumpReLUSAE",
    "ReluSAE",
    "SAEConfigError",
    "SAEFileError",
    "SAELoss",
    "TopKSAE",
    "load",
    "load_any",
    "save",
    "__version__",
]

_LAZY = {
    "BaseSAE": ("cafe_sae.base", "BaseSAE"),
    "SAELoss": ("cafe_sae.base", "SAELoss"),
    "ReluSAE": ("cafe_sae.relu", "ReluSAE"),
    "TopKSAE": ("cafe_sae.topk", "TopKSAE"),
    "JumpReLUSAE": ("cafe_sae.jumprelu", "JumpReLUSAE"),
    "GatedSAE": ("cafe_sae.gated", "GatedSAE"),
    "load": ("cafe_sae.io", "load"),
    "load_any": ("cafe_sae.loading", "load_any"),
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
