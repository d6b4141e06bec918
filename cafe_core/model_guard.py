"""Noticing a component that changes the model it was given.

An attributor or metric that mutates a weight, leaves a hook or a patched ``forward`` behind, flips
``requires_grad`` or the training mode silently changes the results of every component that runs after it.
:class:`ModelGuard` takes a cheap fingerprint of the backbone's and the SAEs' modules before a component runs
and compares it afterwards: on the first call of each component in a run, and on every call when the run is
paranoid.

The fingerprint holds, per module: its class, the class's ``forward`` (a global patch), the methods set on the
instance (an instance-level patch), its training flag and the number of each kind of hook; per parameter and
buffer: its identity, shape, dtype, device, ``requires_grad``, whether it holds a ``.grad``, autograd version
counter (bumped
by every in-place change made through the tensor) and a CRC-32 of its bytes (which also catches changes made
through ``.data``, where the counter does not move); and the functions of ``torch.nn.functional`` together with
PyTorch's global module hooks, which rule-based attribution libraries may patch.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from .errors import CafeError

__all__ = ["ModelChangedError", "ModelFingerprint", "ModelGuard", "modules_of"]

_HOOK_DICTS = (
    "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
    "_state_dict_hooks", "_load_state_dict_pre_hooks",
)
_GLOBAL_HOOKS = (
    "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
    "_global_backward_pre_hooks", "_global_parameter_registration_hooks", "_global_module_registration_hooks",
)
_SHOWN = 5


class ModelChangedError(CafeError):
    """A component left the backbone or an SAE different from how it found it."""


def modules_of(component: Any) -> list[nn.Module]:
    """The modules a component computes with: itself if it is one, else its attributes that are modules."""
    if isinstance(component, nn.Module):
        return [component]
    return [value for value in vars(component).values() if isinstance(value, nn.Module)]


@dataclass(frozen=True)
class ModelFingerprint:
    """What :func:`ModelFingerprint.of` reads off a set of named modules, entry by entry."""

    entries: dict[str, Any]

    @classmethod
    def of(cls, named_modules: Iterable[tuple[str, nn.Module]]) -> "ModelFingerprint":
        """Fingerprint ``(name, module)`` pairs (and the global state of ``torch.nn``)."""
        entries: dict[str, Any] = {}
        for owner, root in named_modules:
            for path, module in root.named_modules():
                where = f"{owner}.{path}" if path else owner
                entries[f"module {where}: class"] = type(module)
                entries[f"module {where}: class forward"] = getattr(type(module), "forward", None)
                entries[f"module {where}: methods set on the instance"] = tuple(
                    sorted(name for name, value in vars(module).items() if callable(value))
                )
                entries[f"module {where}: training"] = module.training
                for hooks in _HOOK_DICTS:
                    entries[f"module {where}: {hooks.strip('_').replace('_', ' ')}"] = len(getattr(module, hooks, {}))
            entries.update(_tensor_entries(owner, root))
        functional = vars(nn.functional)
        entries.update({f"torch.nn.functional.{name}": functional[name] for name in sorted(functional)
                        if callable(functional[name])})
        state = nn.modules.module
        entries.update({f"torch.nn {name.strip('_').replace('_', ' ')}": len(getattr(state, name, {}))
                        for name in _GLOBAL_HOOKS})
        return cls(entries)

    def differences(self, after: "ModelFingerprint") -> list[str]:
        """Entries that differ from ``after``, as readable lines."""
        lines = []
        for name in sorted(set(self.entries) | set(after.entries)):
            before_value, after_value = self.entries.get(name, "<absent>"), after.entries.get(name, "<absent>")
            if not _same(before_value, after_value):
                lines.append(f"{name}: {_show(before_value)} -> {_show(after_value)}")
        return lines


def _tensor_entries(owner: str, root: nn.Module) -> Iterator[tuple[str, Any]]:
    tensors = [("parameter", name, p) for name, p in root.named_parameters(remove_duplicate=False)]
    tensors += [("buffer", name, b) for name, b in root.named_buffers(remove_duplicate=False) if b is not None]
    for kind, name, tensor in tensors:
        where = f"{kind} {owner}.{name}"
        yield f"{where}: identity", id(tensor)
        yield f"{where}: layout", (tuple(tensor.shape), tensor.dtype, tensor.device)
        yield f"{where}: requires_grad", tensor.requires_grad
        yield f"{where}: has .grad", tensor.grad is not None
        yield f"{where}: in-place changes", tensor._version
        yield f"{where}: values (CRC-32 of the bytes)", _checksum(tensor)


def _checksum(tensor: torch.Tensor) -> int:
    """CRC-32 of a tensor's bytes (0.26 s for all of ViT-B/16 on 2 CPU cores)."""
    raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy()
    return zlib.crc32(memoryview(raw))


def _same(a: Any, b: Any) -> bool:
    return a is b or a == b


def _show(value: Any) -> str:
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '?')}.{value.__qualname__}"
    return "none" if value is None else str(value)


class ModelGuard:
    """Checks that components leave the backbone and the SAEs of a run as they found them.

    Parameters
    ----------
    named_modules : list of (str, nn.Module)
        What to watch, with the names errors use (``"backbone"``, ``"sae 'toy_sae'"``).
    paranoid : bool
        Check every call; otherwise only the first call of each component.
    """

    def __init__(self, named_modules: list[tuple[str, nn.Module]], *, paranoid: bool = False) -> None:
        self.named_modules = named_modules
        self.paranoid = paranoid
        self._checked: set[str] = set()
        self._fingerprint: ModelFingerprint | None = None  # taken before the call being watched

    def watching(self, component: str) -> "_Watch":
        """A context manager around one call of ``component`` (a label such as ``"attributor 'ig'"``)."""
        active = self.paranoid or component not in self._checked
        return _Watch(self, component, active)

    def _before(self) -> None:
        self._fingerprint = ModelFingerprint.of(self.named_modules)

    def _after(self, component: str) -> None:
        after = ModelFingerprint.of(self.named_modules)
        changes = self._fingerprint.differences(after)
        self._fingerprint = None
        self._checked.add(component)
        if changes:
            shown = "; ".join(changes[:_SHOWN]) + (f"; and {len(changes) - _SHOWN} more" if len(changes) > _SHOWN else "")
            raise ModelChangedError(
                f"{component} changed the model it was given ({shown}); every component after it would compute "
                "with a different model, so the run stops here (what is stored is kept). The component must "
                "leave the model as it found it (remove its hooks and patches and restore weights and flags in "
                "a finally block, or work on a copy): report it to its plugin's authors, or leave it out of "
                "the spec"
            )


class _Watch:
    def __init__(self, guard: ModelGuard, component: str, active: bool) -> None:
        self.guard, self.component, self.active = guard, component, active

    def __enter__(self) -> None:
        if self.active:
            self.guard._before()

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if self.active and exc_type is None:
            self.guard._after(self.component)
