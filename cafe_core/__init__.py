"""cafe: causal explanations of sparse-autoencoder features in vision models.

Public API::

    import cafe_core
    results = cafe_core.run("spec.toml")          # or a dict, or a RunSpec
    results.summary()                            # mean / median score per attributor and metric
    cafe_core.report(results.directory)          # HTML report with figures (needs a report plugin)

Importing this package is cheap: torch, the plugin manager and every plugin load only when first used.
"""

from __future__ import annotations

from typing import Any

from .hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["Results", "RunSpec", "hookimpl", "load_spec", "report", "run", "__version__"]

_LAZY = {
    "run": ("cafe_core.runner", "run"),
    "Results": ("cafe_core.results", "Results"),
    "RunSpec": ("cafe_core.spec", "RunSpec"),
    "load_spec": ("cafe_core.spec", "load_spec"),
    "report": ("cafe_core.reporting", "report"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        return getattr(importlib.import_module(module_name), attr)
    raise AttributeError(f"module 'cafe_core' has no attribute {name!r}")
