"""Snapshots of everything a component could leave behind on a model, for a plugin's own tests.

The same fingerprint the run takes around each component (:mod:`cafe_core.model_guard`)::

    before = snapshot(backbone.model)
    attributor.attribute(target, x, context)
    assert before.differences(snapshot(backbone.model)) == []
"""

from __future__ import annotations

import torch

from ..model_guard import ModelFingerprint

__all__ = ["ModelState", "snapshot"]

ModelState = ModelFingerprint


def snapshot(model: torch.nn.Module) -> ModelFingerprint:
    """Fingerprint ``model``: hooks, patched methods, modes, gradients, and parameter and buffer values."""
    return ModelFingerprint.of([("model", model)])
