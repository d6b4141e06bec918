"""Snapshots of everything an attributor could leave behind on a model: hooks, patched methods, gradients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ModelState", "snapshot"]

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


def _global_hooks() -> dict[str, int]:
    from torch.nn.modules import module as module_mod

    names = [n for n in dir(module_mod) if n.startswith("_global_") and n.endswith("hooks")]
    return {n: len(getattr(module_mod, n)) for n in names if isinstance(getattr(module_mod, n), dict)}


@dataclass
class ModelState:
    """What :func:`snapshot` records; compare two with :meth:`differences`."""

    module_types: dict[str, type]
    instance_overrides: dict[str, tuple[str, ...]]
    class_forwards: dict[type, Any]
    hooks: dict[str, tuple[int, ...]]
    global_hooks: dict[str, int]
    grads: dict[str, bool]
    requires_grad: dict[str, bool]
    training: dict[str, bool]
    parameters: dict[str, torch.Tensor]

    def differences(self, other: "ModelState") -> list[str]:
        """Human-readable list of what changed from ``self`` to ``other``."""
        found = []
        for field_name in ("module_types", "instance_overrides", "hooks", "global_hooks", "requires_grad", "training"):
            before, after = getattr(self, field_name), getattr(other, field_name)
            if before != after:
                keys = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
                found.append(f"{field_name.replace('_', ' ')} changed at {keys[:5]}")
        changed_classes = [c.__qualname__ for c in self.class_forwards if other.class_forwards.get(c) is not self.class_forwards[c]]
        if changed_classes:
            found.append(f"forward of classes {changed_classes} was replaced (a global patch left behind)")
        new_grads = sorted(k for k, has in other.grads.items() if has and not self.grads.get(k))
        if new_grads:
            found.append(f"parameters gained .grad: {new_grads[:5]}")
        moved = sorted(k for k, v in self.parameters.items() if not torch.equal(v, other.parameters[k]))
        if moved:
            found.append(f"parameter values changed: {moved[:5]}")
        return found


def snapshot(model: torch.nn.Module) -> ModelState:
    """Record the hooks, method overrides, gradients and parameter values of ``model``."""
    modules = dict(model.named_modules())
    return ModelState(
        module_types={name: type(m) for name, m in modules.items()},
        instance_overrides={
            name: tuple(sorted(k for k, v in vars(m).items() if callable(v) and not isinstance(v, torch.nn.Module)))
            for name, m in modules.items()
        },
        class_forwards={type(m): getattr(type(m), "forward", None) for m in modules.values()},
        hooks={name: tuple(len(getattr(m, d, {}) or {}) for d in _HOOK_DICTS) for name, m in modules.items()},
        global_hooks=_global_hooks(),
        grads={name: p.grad is not None for name, p in model.named_parameters()},
        requires_grad={name: p.requires_grad for name, p in model.named_parameters()},
        training={name: m.training for name, m in modules.items()},
        parameters={name: p.detach().clone() for name, p in model.named_parameters()},
    )
