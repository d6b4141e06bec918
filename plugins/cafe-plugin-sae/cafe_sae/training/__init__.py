"""Training ReLU and TopK SAEs on a backbone's activations.

Public API::

    from cafe_sae.training import collect_activations, train_sae, train_from_spec

    collect_activations(backbone, dataset, layer=10, tokens="patch", out_dir="acts", shard_tokens=65536)
    result = train_sae("acts", architecture="topk", expansion=16, k=32, steps=20000,
                       checkpoint_dir="ckpt", save_to="sae.safetensors")

    result = train_from_spec("train.toml", "out")     # what `cafe train-sae train.toml --out out` runs

Importing this package is cheap: torch loads only when one of these names is first used.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ActivationManifest",
    "ActivationStore",
    "ActivationStoreError",
    "EvalMetrics",
    "TrainResult",
    "TrainingError",
    "TrainingPlan",
    "TrainingResult",
    "TrainingSpec",
    "collect_activations",
    "evaluate_sae",
    "fraction_of_variance_explained",
    "geometric_median",
    "load_training_spec",
    "mean_l0",
    "prepare_training",
    "read_metrics_log",
    "train_from_spec",
    "train_sae",
    "write_activations",
]

_LAZY = {
    "ActivationManifest": "manifest",
    "ActivationStore": "store",
    "ActivationStoreError": "errors",
    "EvalMetrics": "metrics",
    "TrainResult": "trainer",
    "TrainingError": "errors",
    "TrainingPlan": "spec",
    "TrainingResult": "pipeline",
    "TrainingSpec": "spec",
    "collect_activations": "activations",
    "evaluate_sae": "metrics",
    "fraction_of_variance_explained": "metrics",
    "geometric_median": "initialisation",
    "load_training_spec": "spec",
    "mean_l0": "metrics",
    "prepare_training": "spec",
    "read_metrics_log": "log",
    "train_from_spec": "pipeline",
    "train_sae": "trainer",
    "write_activations": "activations",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
