"""Errors of SAE training; each message names the problem and the fix."""

from __future__ import annotations

from cafe_core.errors import CafeError

__all__ = ["ActivationStoreError", "TrainingError"]


class ActivationStoreError(CafeError, ValueError):
    """A folder of activations cannot be read, or holds activations of another model, layer, token set or dataset."""


class TrainingError(CafeError, ValueError):
    """Training cannot start or resume: bad arguments, or checkpoints written with other settings."""
