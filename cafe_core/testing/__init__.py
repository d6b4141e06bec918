"""Tools for plugin authors' own tests: conformance checks and model-state snapshots."""

from .conformance import ConformanceError, check_attributor, check_backbone, check_metric, check_sae
from .model_state import ModelState, snapshot

__all__ = [
    "ConformanceError",
    "ModelState",
    "check_attributor",
    "check_backbone",
    "check_metric",
    "check_sae",
    "snapshot",
]
