"""SAE checkpoints as single safetensors files with their config in the header.

A checkpoint holds the tensors ``W_e``, ``b_e``, ``b_d``, ``W_d``, ``b_h`` and, under the header metadata key
``"cafe_sae"``, a JSON config::

    {"format_version": 1, "architecture": "relu" | "topk", "d_in": 768, "d_sae": 24576,
     "layer": 10 | null, "site": "patch" | "cls" | "all", "activation": "relu" | "topk",
     "k": 32 (topk only), "extra": {...free information...}}

Every reading problem (missing or corrupt file, no config, missing or unexpected tensor, a shape that
contradicts the config, NaN or infinite weights) raises :class:`~cafe_sae.errors.SAEFileError` naming the
file, the problem and the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .base import SITES, BaseSAE
from .errors import SAEConfigError, SAEFileError
from .relu import ReluSAE
from .topk import TopKSAE

__all__ = ["ARCHITECTURES", "CONFIG_KEY", "FORMAT_VERSION", "Checkpoint", "load", "read_checkpoint", "save"]

CONFIG_KEY = "cafe_sae"
FORMAT_VERSION = 1
ARCHITECTURES: dict[str, type[BaseSAE]] = {"relu": ReluSAE, "topk": TopKSAE}

_RESAVE = "re-save it with cafe_sae.io.save (or copy the file again if it was cut short)"
# torch.save writes a zip archive (new format) or a bare pickle (legacy format)
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


class CheckpointConfig(BaseModel):
    """The validated ``"cafe_sae"`` config of a checkpoint."""

    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1]
    architecture: Literal["relu", "topk"]
    d_in: int = Field(gt=0)
    d_sae: int = Field(gt=0)
    layer: int | None = Field(default=None, ge=0)
    site: Literal["patch", "cls", "all"]
    activation: str | None = None
    k: int | None = Field(default=None, gt=0)
    extra: dict[str, Any] = Field(default_factory=dict)


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
    """Write ``sae`` to one safetensors file with its config in the header.

    Parameters
    ----------
    sae : BaseSAE
        A :class:`~cafe_sae.relu.ReluSAE` or :class:`~cafe_sae.topk.TopKSAE`.
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
    tensors = {name: getattr(sae, name).detach().to("cpu").contiguous() for name in sae.parameter_names}
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
    """Read an SAE saved by :func:`save`.

    Parameters
    ----------
    path : str or pathlib.Path
        A safetensors file with a ``"cafe_sae"`` config.

    Returns
    -------
    BaseSAE
        A :class:`~cafe_sae.relu.ReluSAE` or :class:`~cafe_sae.topk.TopKSAE`, on the CPU, in the file's
        dtype.

    Raises
    ------
    SAEFileError
        For any problem with the file (see the module documentation).
    """
    checkpoint = read_checkpoint(path)
    if checkpoint.config is None:
        raise SAEFileError(
            f"{checkpoint.path} has no {CONFIG_KEY!r} config in its header, so its architecture and sizes "
            f"are unknown (tensors: {_names(checkpoint.tensors)}); load it as SAE 'relu' or 'topk' (plain "
            "state dicts are accepted there), or re-save it with cafe_sae.io.save"
        )
    return sae_from_config(checkpoint.config, checkpoint.tensors, checkpoint.path)


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read the tensors and validated config of a safetensors file, or the tensors of a ``torch.save`` file.

    Raises
    ------
    SAEFileError
        If the file is missing, unreadable, not a flat mapping of tensors, or its config is invalid.
    """
    path = Path(path)
    if not path.exists():
        raise SAEFileError(f"SAE checkpoint {path} does not exist; check the path (relative paths start at "
                           f"the working directory {Path.cwd()})")
    if not path.is_file():
        raise SAEFileError(f"SAE checkpoint {path} is a directory; give the path of the checkpoint file in it")
    try:
        with path.open("rb") as handle:
            head = handle.read(9)
    except OSError as exc:
        raise SAEFileError(f"cannot read SAE checkpoint {path} ({exc}); check its permissions") from exc
    # A safetensors file starts with its 8-byte header length, whose first byte may be 0x80 like a pickle's;
    # its JSON header, which opens with "{", is what tells them apart.
    if head.startswith(_TORCH_MAGIC) and head[8:9] != b"{":
        return Checkpoint(path, _read_torch(path), None)
    tensors, metadata = _read_safetensors(path)
    raw = metadata.get(CONFIG_KEY)
    return Checkpoint(path, tensors, None if raw is None else _parse_config(raw, path))


def sae_from_config(
    config: CheckpointConfig,
    tensors: Mapping[str, torch.Tensor],
    source: Path | str,
    sizes_from: str = "its config",
) -> BaseSAE:
    """Build the SAE a config describes from its tensors, checking every tensor against the config.

    ``sizes_from`` says where ``d_in`` and ``d_sae`` come from, for messages.

    Raises
    ------
    SAEFileError
        For a missing, unexpected, misshapen, non-float or non-finite tensor.
    """
    cls = ARCHITECTURES[config.architecture]
    kwargs: dict[str, Any] = {}
    if cls is TopKSAE:
        if config.k is None:
            raise SAEFileError(f"the config of {source} describes a topk SAE but gives no 'k'; {_RESAVE}")
        if config.k > config.d_sae:
            raise SAEFileError(
                f"the config of {source} gives k={config.k}, more than its d_sae={config.d_sae}; {_RESAVE}"
            )
        kwargs["k"] = config.k
    elif config.k is not None:
        raise SAEFileError(f"the config of {source} gives 'k' for a {config.architecture} SAE; {_RESAVE}")
    if config.activation is not None and config.activation != config.architecture:
        raise SAEFileError(
            f"the config of {source} contradicts itself: architecture {config.architecture!r} but activation "
            f"{config.activation!r}; {_RESAVE}"
        )
    sae = cls(
        config.d_in,
        config.d_sae,
        layer=config.layer,
        site=config.site,
        extra=config.extra,
        device="meta",
        **kwargs,
    )
    what = f"{sizes_from} (d_in={config.d_in}, d_sae={config.d_sae})"
    check_tensors(tensors, sae.expected_shapes(), source, what)
    dtype = tensors["W_e"].dtype
    sae.load_state_dict({name: tensors[name].to(dtype) for name in sae.parameter_names}, assign=True)
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
            f"incomplete or of another layout: {_RESAVE}"
        )
    unexpected = [name for name in tensors if name not in expected]
    if unexpected:
        raise SAEFileError(
            f"{source} holds tensor(s) {', '.join(map(repr, unexpected))} that this SAE does not have (expected "
            f"exactly {', '.join(map(repr, expected))}); it is probably another architecture (a JumpReLU or "
            "gated SAE?): load it with the plugin of that architecture, or strip those tensors if they are unused"
        )
    for name, shape in expected.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != tuple(shape):
            raise SAEFileError(
                f"tensor {name!r} of {source} has shape {list(tensor.shape)} but {what} requires {list(shape)}; "
                f"the file or its config was altered: {_RESAVE}"
            )
        if not tensor.is_floating_point():
            raise SAEFileError(
                f"tensor {name!r} of {source} has dtype {tensor.dtype}, not a floating point type; {_RESAVE}"
            )
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise SAEFileError(
                f"tensor {name!r} of {source} holds {bad} NaN or infinite value(s) (training diverged, or the file "
                "is damaged); use an earlier checkpoint of the run"
            )


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as exc:
        raise SAEFileError(
            f"cannot read {path} as a safetensors file ({type(exc).__name__}: {exc}); it is damaged, truncated or "
            f"not an SAE checkpoint: {_RESAVE}"
        ) from exc
    return tensors, metadata


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    try:
        content = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SAEFileError(
            f"cannot read {path} as a torch.save file of tensors ({type(exc).__name__}: {exc}); it is damaged, "
            "truncated or holds more than tensors: save the state dict alone (torch.save(sae.state_dict(), path)) "
            "or convert it to safetensors"
        ) from exc
    if not isinstance(content, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in content.items()
    ):
        kind = type(content).__name__
        keys = f" with keys {sorted(map(str, content))[:8]}" if isinstance(content, Mapping) else ""
        raise SAEFileError(
            f"{path} holds a {kind}{keys}, not a flat mapping of names to tensors; save the SAE's state dict "
            "alone (torch.save(sae.state_dict(), path)), e.g. the entry of a training checkpoint that holds it"
        )
    return dict(content)


def _parse_config(raw: str, path: Path) -> CheckpointConfig:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SAEFileError(f"the {CONFIG_KEY!r} config in the header of {path} is not valid JSON ({exc}); {_RESAVE}")
    if not isinstance(data, dict):
        raise SAEFileError(f"the {CONFIG_KEY!r} config of {path} is a {type(data).__name__}, not an object; {_RESAVE}")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        if isinstance(version, int) and version > FORMAT_VERSION:
            fix = "upgrade cafe-plugin-sae (pip install -U cafe-plugin-sae)"
        else:
            fix = _RESAVE
        raise SAEFileError(
            f"{path} has SAE config format_version {version!r}, but this cafe-plugin-sae reads version "
            f"{FORMAT_VERSION}; {fix}"
        )
    try:
        return CheckpointConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or '<config>'}: {err['msg']}" for err in exc.errors()
        )
        raise SAEFileError(
            f"the {CONFIG_KEY!r} config of {path} is invalid ({problems}); expected architecture in "
            f"{sorted(ARCHITECTURES)}, positive d_in/d_sae, layer >= 0 or null, site in {list(SITES)}: {_RESAVE}"
        ) from None


def _names(tensors: Mapping[str, Any]) -> str:
    names = sorted(tensors)
    shown = ", ".join(repr(n) for n in names[:10])
    return (shown + f" and {len(names) - 10} more") if len(names) > 10 else (shown or "no tensors")
