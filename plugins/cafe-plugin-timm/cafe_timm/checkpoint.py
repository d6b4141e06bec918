"""Reading a local state dict and loading it into a timm model."""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping

import torch

from .dinov2_hub import is_hub_dinov2, resample_hub_pos_embed
from .errors import TimmBackboneError

__all__ = ["load_checkpoint", "read_state_dict"]

_WRAPPER_KEYS = ("state_dict", "model")
_SHOWN = 5


def read_state_dict(path: pathlib.Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, on the CPU.

    ``.safetensors`` files are read with :func:`safetensors.torch.load_file`, anything else with
    ``torch.load(weights_only=True)``. A dict that wraps the weights under ``"state_dict"`` or ``"model"`` is
    unwrapped, and a ``"module."`` prefix left by ``DataParallel`` is removed.

    Raises
    ------
    TimmBackboneError
        If the file cannot be read or holds no state dict.
    """
    path = pathlib.Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(path), device="cpu")
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TimmBackboneError(
            f"cannot read checkpoint '{path}' ({type(exc).__name__}: {_first_line(exc)}); it must be a "
            "safetensors file or a state dict saved with torch.save(model.state_dict(), path). Re-save the "
            "weights in one of these forms, or check that the file is complete"
        ) from exc
    for key in _WRAPPER_KEYS:
        if isinstance(raw, Mapping) and isinstance(raw.get(key), Mapping):
            raw = raw[key]
            break
    if not isinstance(raw, Mapping) or not raw:
        raise TimmBackboneError(
            f"checkpoint '{path}' holds {type(raw).__name__}, not a state dict; save the weights with "
            "torch.save(model.state_dict(), path) or safetensors.torch.save_file(model.state_dict(), path)"
        )
    not_tensors = [k for k, v in raw.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise TimmBackboneError(
            f"checkpoint '{path}' is not a plain state dict: entries {_few(not_tensors)} are not tensors; "
            "save only model.state_dict() (or wrap it under 'state_dict' or 'model')"
        )
    state = {str(k): v for k, v in raw.items()}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


_VIT_KWARGS = "depth, embed_dim, num_heads, patch_size, class_token, reg_tokens, num_classes..."

Converter = Callable[[dict[str, torch.Tensor], torch.nn.Module], dict[str, torch.Tensor]]


def load_checkpoint(
    model: torch.nn.Module,
    path: pathlib.Path,
    model_name: str,
    *,
    converter: Converter | None | str = "vit",
    kwargs_hint: str = _VIT_KWARGS,
) -> None:
    """Load the state dict of ``path`` into ``model`` (all keys must match).

    When the names or shapes do not match directly, timm's own conversion is tried before giving up: by
    default ``vision_transformer.checkpoint_filter_fn`` (position embedding resampling for another image size,
    patch embedding resampling, original JAX/CLIP layouts, DINOv2 torch-hub layouts). The position embedding
    of a DINOv2 torch-hub checkpoint without registers is first resampled as DINOv2's own code does
    (:mod:`cafe_timm.dinov2_hub`), so that the tokens are those of the hub model at any input size.

    Parameters
    ----------
    model : torch.nn.Module
        The timm model to fill.
    path : pathlib.Path
        The checkpoint file.
    model_name : str
        The timm name, for messages.
    converter : callable or None or "vit"
        ``(state_dict, model) -> state_dict`` tried on a mismatch (a timm ``checkpoint_filter_fn``); ``"vit"``
        for the Vision Transformer one, ``None`` for none.
    kwargs_hint : str
        The ``model_kwargs`` that shape the architecture, named in the error message.

    Raises
    ------
    TimmBackboneError
        Naming the file, a few missing, unexpected or mis-shaped keys, and the fix.
    """
    state = read_state_dict(path)
    if converter == "vit" and is_hub_dinov2(state):
        # Resampled here as DINOv2's code does, so that timm's conversion finds the size it needs.
        state["pos_embed"] = resample_hub_pos_embed(state["pos_embed"], tuple(model.patch_embed.grid_size))
    problems = _mismatch(model, state)
    if problems:
        converted = _convert(model, state, converter)
        if converted is not None and not _mismatch(model, converted):
            state, problems = converted, []
    if problems:
        raise TimmBackboneError(
            f"checkpoint '{path}' does not fit timm model {model_name!r}: {'; '.join(problems)}. The model name, "
            f"img_size and model_kwargs ({kwargs_hint}) must describe the architecture the checkpoint was "
            "trained with"
        )
    model.load_state_dict(state, strict=True)


def _convert(
    model: torch.nn.Module, state: dict[str, torch.Tensor], converter: Converter | None | str
) -> dict[str, torch.Tensor] | None:
    if converter == "vit":
        from timm.models.vision_transformer import checkpoint_filter_fn as converter
    if converter is None:
        return None
    try:
        return converter(dict(state), model)
    except Exception:
        # The conversion only applies to some layouts; the direct mismatch is the better explanation.
        return None


def _mismatch(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) {_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) {_few(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es) (checkpoint vs model) {_few(shapes)}")
    return problems


def _few(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return f"[{shown}{', ...' if len(items) > _SHOWN else ''}]"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"
