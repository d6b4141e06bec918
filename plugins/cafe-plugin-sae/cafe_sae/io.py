"""cafe's own SAE checkpoints: one safetensors file with its config in the header.

A checkpoint holds the SAE's tensors (``W_e``, ``b_e``, ``b_d``, ``W_d``, ``b_h``; ``threshold`` for JumpReLU;
``b_gate``, ``r_mag``, ``b_mag`` instead of ``b_e`` for gated SAEs; ``input_mean`` with ``"shift_scale"``
normalisation) and, under the header metadata key ``"cafe_sae"``, the JSON config described in
:mod:`cafe_sae.config`. :func:`save` writes format version 2; :func:`load` reads versions 1 and 2.

Every reading problem (missing or corrupt file, no config, missing or unexpected tensor, a shape that
contradicts the config, NaN or infinite weights) raises :class:`~cafe_sae.errors.SAEFileError` naming the
file, the problem and the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from .architectures import ARCHITECTURES
from .base import BaseSAE
from .config import CONFIG_KEY, FORMAT_VERSION, RESAVE, CheckpointConfig, parse_config
from .errors import SAEConfigError, SAEFileError
from .formats.torch_files import flat_tensors, is_torch_file, load_weights
from .location import check_location

__all__ = [
    "ARCHITECTURES", "CONFIG_KEY", "FORMAT_VERSION", "Checkpoint", "check_tensors", "load", "read_checkpoint",
    "sae_from_config", "save",
]


@dataclass
class Checkpoint:
    """The raw content of a checkpoint file.

    Attributes
    ----------
    path : pathlib.Path
        Where it was read from.
    tensors : dict of str to torch.Tensor
        Every tensor in the file, on the CPU.
    config : CheckpointConfig or None
        The validated config, or None for a plain state dict (no ``"cafe_sae"`` metadata).
    """

    path: Path
    tensors: dict[str, torch.Tensor]
    config: CheckpointConfig | None


def save(sae: BaseSAE, path: str | Path, *, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``sae`` to one safetensors file with its config in the header (format version 2).

    Parameters
    ----------
    sae : BaseSAE
        Any SAE of this plugin.
    path : str or pathlib.Path
        Destination (conventionally ``*.safetensors``); missing parent folders are created.
    extra : mapping, optional
        JSON-serialisable information merged into ``sae.extra`` in the stored config.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    SAEConfigError
        If ``extra`` is not JSON-serialisable or the weights hold NaN or infinite values.
    """
    from safetensors.torch import save_file

    path = Path(path)
    config = sae.config()
    config["extra"] = {**config["extra"], **dict(extra or {})}
    try:
        text = json.dumps(config)
    except (TypeError, ValueError) as exc:
        raise SAEConfigError(
            f"cannot save the SAE to {path}: its extra information is not JSON-serialisable ({exc}); "
            "convert those values to strings, numbers, lists or dicts"
        ) from exc
    tensors = {name: getattr(sae, name).detach().to("cpu").contiguous() for name in sae.tensor_names}
    for name, tensor in tensors.items():
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise SAEConfigError(
                f"refusing to save the SAE to {path}: parameter {name!r} holds {bad} NaN or infinite "
                "value(s) and could not be loaded again; save an earlier, finite state of the model"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={CONFIG_KEY: text})
    return path


def load(path: str | Path) -> BaseSAE:
    """Read an SAE saved by :func:`save` (format version 1 or 2).

    For checkpoints of other libraries use :func:`cafe_sae.load_any`.

    Parameters
    ----------
    path : str or pathlib.Path
        A safetensors file with a ``"cafe_sae"`` config.

    Returns
    -------
    BaseSAE
        The SAE of the config's architecture, on the CPU, in the file's dtype, trainable.

    Raises
    ------
    SAEFileError
        For any problem with the file (see the module documentation).
    """
    location = check_location(path)
    if not isinstance(location, Path) or not location.is_file():
        what = "a directory" if isinstance(location, Path) else "on the Hugging Face Hub"
        raise SAEFileError(
            f"SAE checkpoint {location} is {what}, but cafe_sae.load reads one local cafe checkpoint file; give "
            "the path of that file, or load folders, hf:// paths and other libraries' checkpoints with "
            "cafe_sae.load_any"
        )
    checkpoint = read_checkpoint(location)
    if checkpoint.config is None:
        raise SAEFileError(
            f"{checkpoint.path} has no {CONFIG_KEY!r} config in its header, so its architecture and sizes "
            f"are unknown (tensors: {_names(checkpoint.tensors)}); load it as SAE 'relu' or 'topk' (plain "
            "state dicts are accepted there), or re-save it with cafe_sae.io.save"
        )
    return sae_from_config(checkpoint.config, checkpoint.tensors, checkpoint.path)


def read_checkpoint(path: Path) -> Checkpoint:
    """Read the tensors and validated config of a safetensors file, or the tensors of a ``torch.save`` file.

    Raises
    ------
    SAEFileError
        If the file is unreadable, not a flat mapping of tensors, or its config is invalid.
    """
    try:
        torch_file = is_torch_file(path)
    except OSError as exc:
        raise SAEFileError(f"cannot read SAE checkpoint {path} ({exc}); check its permissions") from exc
    if torch_file:
        return Checkpoint(path, flat_tensors(load_weights(path, path), path), None)
    tensors, metadata = read_safetensors(path)
    raw = metadata.get(CONFIG_KEY)
    return Checkpoint(path, tensors, None if raw is None else parse_config(raw, path))


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor of a safetensors file (on the CPU) and its header metadata.

    Raises
    ------
    SAEFileError
        If it is not a readable safetensors file.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as exc:
        raise SAEFileError(
            f"cannot read {path} as a safetensors file ({type(exc).__name__}: {exc}); it is damaged, truncated or "
            f"not an SAE checkpoint: {RESAVE}"
        ) from exc
    return tensors, metadata


def sae_from_config(
    config: CheckpointConfig,
    tensors: Mapping[str, torch.Tensor],
    source: Path | str,
    sizes_from: str = "its config",
) -> BaseSAE:
    """Build the SAE a (consistent) config describes from its tensors, checking every tensor against it.

    ``sizes_from`` says where ``d_in`` and ``d_sae`` come from, for messages.

    Raises
    ------
    SAEFileError
        For a missing, unexpected, misshapen, non-float or non-finite tensor.
    """
    sae = ARCHITECTURES[config.architecture](config.d_in, config.d_sae, device="meta", **config.constructor_kwargs())
    what = f"{sizes_from} (d_in={config.d_in}, d_sae={config.d_sae})"
    check_tensors(tensors, sae.expected_shapes(), source, what)
    dtype = tensors["W_e"].dtype
    sae.load_state_dict({name: tensors[name].to(dtype) for name in sae.tensor_names}, assign=True)
    return sae


def check_tensors(
    tensors: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    source: Path | str,
    what: str,
) -> None:
    """Check that ``tensors`` has exactly the ``expected`` names and shapes, floating and finite values.

    Parameters
    ----------
    tensors : mapping of str to torch.Tensor
        What the file holds.
    expected : mapping of str to tuple of int
        Required names and shapes.
    source : path or str
        The file, for the message.
    what : str
        Where the expected shapes come from, for the message.

    Raises
    ------
    SAEFileError
        Naming the first problem found, the file and the fix.
    """
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise SAEFileError(
            f"{source} lacks tensor(s) {', '.join(map(repr, missing))} (it holds {_names(tensors)}); the file is "
            f"incomplete or of another layout: {RESAVE}"
        )
    unexpected = [name for name in tensors if name not in expected]
    if unexpected:
        raise SAEFileError(
            f"{source} holds tensor(s) {', '.join(map(repr, unexpected))} that this SAE does not have (expected "
            f"exactly {', '.join(map(repr, expected))}); it is probably another architecture (a JumpReLU or "
            "gated SAE?) saved with the wrong config: re-save it, or strip those tensors if they are unused"
        )
    for name, shape in expected.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != tuple(shape):
            raise SAEFileError(
                f"tensor {name!r} of {source} has shape {list(tensor.shape)} but {what} requires {list(shape)}; "
                f"the file or its config was altered: {RESAVE}"
            )
        if not tensor.is_floating_point():
            raise SAEFileError(
                f"tensor {name!r} of {source} has dtype {tensor.dtype}, not a floating point type; {RESAVE}"
            )
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise SAEFileError(
                f"tensor {name!r} of {source} holds {bad} NaN or infinite value(s) (training diverged, or the file "
                "is damaged); use an earlier checkpoint of the run"
            )


def _names(tensors: Mapping[str, Any]) -> str:
    names = sorted(tensors)
    shown = ", ".join(repr(n) for n in names[:10])
    return (shown + f" and {len(names) - 10} more") if len(names) > 10 else (shown or "no tensors")
