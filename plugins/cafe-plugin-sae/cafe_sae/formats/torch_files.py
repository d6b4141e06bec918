"""Reading tensors out of ``torch.save`` files without running code stored in them.

``torch.load(weights_only=True)`` reads state dicts. Some libraries pickle an object of their own beside the
tensors (ViT-Prisma saves ``{"cfg": <config object>, "state_dict": ...}``); unpickling that object would import
and run that library's code. :func:`load_tensors_only` then falls back to an unpickler that rebuilds tensors
and plain containers and turns every other object into an inert placeholder, without importing anything.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any, BinaryIO, Mapping

import torch

from ..errors import SAEFileError

__all__ = ["InertObject", "flat_tensors", "is_torch_file", "load_tensors_only", "load_weights"]

# torch.save writes a zip archive (new format) or a bare pickle (legacy format)
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")

# What a state dict's pickle refers to besides storages (which torch's own unpickler resolves first).
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "device"),
    ("torch", "Size"),
}


class InertObject:
    """Stands for an object of a foreign class in a pickle: accepts its construction and state, keeps nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "InertObject":
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _TensorsOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return InertObject


_TENSORS_ONLY = SimpleNamespace(Unpickler=_TensorsOnlyUnpickler, load=pickle.load, __name__="tensors_only_pickle")


def is_torch_file(path: Path) -> bool:
    """Whether ``path`` starts like a ``torch.save`` file (and not like a safetensors file)."""
    with path.open("rb") as handle:
        head = handle.read(9)
    # A safetensors file starts with its 8-byte header length, whose first byte may be 0x80 like a pickle's;
    # its JSON header, which opens with "{", is what tells them apart.
    return head.startswith(_TORCH_MAGIC) and head[8:9] != b"{"


def load_weights(source: Path | BinaryIO, path: Path) -> Any:
    """``torch.load(weights_only=True)`` of ``source`` (a file or a buffer read from ``path``), on the CPU.

    Raises
    ------
    SAEFileError
        Naming ``path`` when the content is damaged or holds more than tensors and containers.
    """
    try:
        return torch.load(source if isinstance(source, io.IOBase) else str(source), map_location="cpu",
                          weights_only=True)
    except Exception as exc:
        raise SAEFileError(
            f"cannot read {path} as a torch.save file of tensors ({type(exc).__name__}: {exc}); it is damaged, "
            "truncated or holds more than tensors: save the state dict alone (torch.save(sae.state_dict(), path)) "
            "or convert it to safetensors"
        ) from exc


def load_tensors_only(path: Path) -> Any:
    """The content of a ``torch.save`` file with every non-tensor object replaced by :class:`InertObject`.

    Tries ``weights_only=True`` first; falls back to the restricted unpickler only if that refuses a global.

    Raises
    ------
    SAEFileError
        Naming ``path`` when it cannot be read either way.
    """
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    except Exception as exc:
        raise SAEFileError(
            f"cannot read {path} as a torch.save file ({type(exc).__name__}: {exc}); it is damaged or truncated: "
            "copy it again"
        ) from exc
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False, pickle_module=_TENSORS_ONLY)
    except Exception as exc:
        raise SAEFileError(
            f"cannot read the tensors of {path} ({type(exc).__name__}: {exc}); it is damaged or truncated: copy it "
            "again"
        ) from exc


def flat_tensors(content: Any, path: Path, what: str = "the file") -> dict[str, torch.Tensor]:
    """``content`` as a dict of tensors, or an :class:`SAEFileError` saying what it holds instead."""
    if isinstance(content, Mapping) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in content.items()
    ):
        return dict(content)
    kind = type(content).__name__
    keys = f" with keys {sorted(map(str, content))[:8]}" if isinstance(content, Mapping) else ""
    raise SAEFileError(
        f"{what} {path} holds a {kind}{keys}, not a flat mapping of names to tensors; save the SAE's state dict "
        "alone (torch.save(sae.state_dict(), path)), e.g. the entry of a training checkpoint that holds it"
    )
