"""Each latent's activation floor: targets whose value is a tiny fraction of what the latent reaches are skipped.

A latent read at ``z`` near 0.001 makes every normalised curve (``z(partial) / z(full)``) explode, so a rule's
``min_relative_activation`` sets a floor at that fraction of the latent's *scale*: its largest value where the
rule reads it, over the first :data:`SCALE_IMAGES` images of the run (all of them when the run has fewer).
The scales are computed once, when a run starts (one forward pass to each SAE's layer per batch), and kept in
the run store: a resumed run reuses them, so every image is judged by the same floor even when images were
added since, and a run over a dataset of any length pays for a bounded sample only.
"""

from __future__ import annotations

import torch

from .plan import RunPlan
from .records import WorkUnit
from .store import RunStore
from .worker import UnitWorker

__all__ = ["SCALE_IMAGES", "activation_floors"]

SCALE_IMAGES = 1024
_META = "activation_scales"


def activation_floors(store: RunStore, plan: RunPlan, n_images: int) -> list[list[torch.Tensor | None]]:
    """Per SAE and rule, each latent's floor (``None`` for a rule without one); ``[]`` when no rule has one.

    Parameters
    ----------
    store : RunStore
        Where the scales are kept between a run and its resumptions.
    plan : RunPlan
        The run's plan.
    n_images : int
        How many images the run covers; the scales are read over the first ``min(n_images, SCALE_IMAGES)``.
    """
    rules = plan.spec.targets
    if all(rule.min_relative_activation <= 0 for rule in rules):
        return []
    scales = _stored_scales(store, plan)
    if scales is None:
        scales = _measured_scales(plan, min(n_images, SCALE_IMAGES))
        if scales is None:  # no images
            return []
        store.set_meta(_META, {
            label: [None if s is None else s.tolist() for s in per_rule]
            for label, per_rule in zip(plan.sae_labels, scales)
        })
    return [
        [None if scale is None else rule.min_relative_activation * scale for rule, scale in zip(rules, per_rule)]
        for per_rule in scales
    ]


def _stored_scales(store: RunStore, plan: RunPlan) -> list[list[torch.Tensor | None]] | None:
    """The scales a run stored, if they cover the rules of this plan."""
    stored = store.get_meta(_META)
    if not isinstance(stored, dict) or not all(isinstance(stored.get(label), list) for label in plan.sae_labels):
        return None
    found = [stored[label] for label in plan.sae_labels]
    expected = [[rule.min_relative_activation > 0 for rule in plan.spec.targets] for _ in plan.saes]
    if [[entry is not None for entry in per_rule] for per_rule in found] != expected:
        return None
    return [[None if e is None else torch.tensor(e, dtype=torch.float64) for e in per_rule] for per_rule in found]


def _measured_scales(plan: RunPlan, n_images: int) -> list[list[torch.Tensor | None]] | None:
    worker = UnitWorker(plan, lambda image_ids: None, lambda key, attributor: None)  # reads no stored work
    scales = None
    batch_size = plan.context.batch_size
    for start in range(0, n_images, batch_size):
        indices = tuple(range(start, min(start + batch_size, n_images)))
        scales = worker.activation_scales(WorkUnit(key=f"scales[{start}:{indices[-1] + 1}]", indices=indices), scales)
    return scales
