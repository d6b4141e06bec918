"""What a format reader returns, and the one place where the spec's params meet what a checkpoint records.

A reader turns a checkpoint into a :class:`Recipe`: tensors under cafe's names, the architecture and its
options, and whatever the checkpoint records about where the SAE reads (layer, site, tokens). While reading it
settles every option against the spec's params through a :class:`Reading`:

* an option the checkpoint records is used; a spec value that differs is an error naming both;
* an option the checkpoint cannot hold must come from the spec (a clear error when it is missing);
* a param the format has no use for is an error, never silently ignored.

:func:`assemble` then builds the SAE, checking every tensor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from ..base import DEFAULT_SITE
from ..config import CheckpointConfig, check_consistency
from ..errors import SAEConfigError, SAEFileError

__all__ = ["OPTION_NAMES", "Reading", "Recipe", "Request", "assemble", "matrix"]

OPTION_NAMES = ("architecture", "k", "subtract_decoder_bias", "input_mean", "input_scalar")
"""Spec params that describe the SAE itself; each format reader consumes those it has a use for."""


@dataclass(frozen=True)
class Request:
    """The SAE params of a spec (``None``: not given)."""

    layer: int | None = None
    tokens: str | None = None
    site: str | None = None
    architecture: str | None = None
    k: int | None = None
    subtract_decoder_bias: bool | None = None
    input_mean: float | Path | None = None
    input_scalar: float | None = None


@dataclass
class Recipe:
    """An SAE as a checkpoint describes it, in cafe's terms.

    Attributes
    ----------
    architecture : str
        ``"relu"``, ``"topk"``, ``"jumprelu"`` or ``"gated"``.
    tensors : dict of str to torch.Tensor
        Under cafe's names (``W_e [d_sae, d_in]``, ``b_e``, ``b_d``, ``W_d [d_in, d_sae]``, ``b_h``, and
        ``threshold``, ``b_gate``, ``r_mag``, ``b_mag``, ``input_mean`` where the architecture has them).
    options : dict
        Constructor options: ``k``, ``relu_after_topk``, ``rescale_by_decoder_norm``, ``threshold_inclusive``,
        ``normalization``, ``input_scalar``.
    layer, site, tokens : optional
        What the checkpoint records (``None`` where it does not).
    hook : str, optional
        The checkpoint's own name of where the SAE reads, for messages (``"blocks.9.hook_resid_pre"``).
    dtype : torch.dtype, optional
        The dtype the originating library computes in; the tensors' own dtype when None.
    extra : dict
        JSON-serialisable provenance kept in the SAE's ``extra``.
    """

    architecture: str
    tensors: dict[str, torch.Tensor]
    options: dict[str, Any] = field(default_factory=dict)
    layer: int | None = None
    site: str | None = None
    tokens: str | None = None
    hook: str | None = None
    dtype: torch.dtype | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Reading:
    """The state of reading one checkpoint: the file, its format, the spec's params and which were used."""

    def __init__(self, source: Path | str, format_name: str, request: Request, component: str | None = None) -> None:
        self.source = source
        self.format = format_name
        self.request = request
        self.component = component
        self.consumed: set[str] = set()

    def settle(self, name: str, recorded: Any) -> Any:
        """The value of option ``name``: what the checkpoint records, checked against the params.

        Returns the params' value where the checkpoint records none (``None`` if neither has one).

        Raises
        ------
        SAEConfigError
            If the params give a value other than the recorded one.
        """
        self.consumed.add(name)
        requested = getattr(self.request, name)
        if recorded is not None and requested is not None and requested != recorded:
            if name == "architecture" and self.component == requested:
                other = f"SAE '{recorded}' or 'file'" if recorded in ("relu", "topk") else "SAE 'file'"
                raise SAEConfigError(
                    f"{self.source} holds a {recorded} SAE, not a {requested} one; use {other} (which reads the "
                    "architecture from the checkpoint)"
                )
            raise SAEConfigError(
                f"the params give {name} = {requested!r} but {self.source} records {name} = {recorded!r}; remove "
                f"{name} from the SAE params or set it to {recorded!r}"
            )
        return recorded if recorded is not None else requested

    def require(self, name: str, why: str) -> Any:
        """The params' value of ``name``, which this checkpoint cannot hold; ``why`` explains what it means.

        Raises
        ------
        SAEConfigError
            If the params do not give it.
        """
        self.consumed.add(name)
        value = getattr(self.request, name)
        if value is None:
            raise SAEConfigError(
                f"{self.source} is a {self.format} checkpoint, which does not record {name}; give {name} in the "
                f"SAE params ({why})"
            )
        return value

    def optional(self, name: str) -> Any:
        """The params' value of ``name`` (``None`` if not given), marking it as used."""
        self.consumed.add(name)
        return getattr(self.request, name)

    def json(self, path: Path) -> dict[str, Any]:
        """The JSON object in ``path`` (a config file beside the weights)."""
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise self.refuse(f"{path.name} is missing beside the weights", "copy the whole checkpoint folder") \
                from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self.refuse(f"cannot read {path} ({type(exc).__name__}: {exc})", "copy it again") from None
        if not isinstance(data, dict):
            raise self.refuse(f"{path} holds a {type(data).__name__}, not a JSON object", "copy it again")
        return data

    def need(self, mapping: Mapping[str, Any], key: str, where: str) -> Any:
        """``mapping[key]``, or an error saying that ``where`` (a config file) lacks it."""
        if key not in mapping or mapping[key] is None:
            raise self.refuse(f"{where} has no {key!r}", "the file is incomplete: copy it again from its source")
        return mapping[key]

    def take(
        self,
        tensors: Mapping[str, torch.Tensor],
        shapes: Mapping[str, tuple[int, ...]],
        what: str,
        ignored: tuple[str, ...] = (),
    ) -> dict[str, torch.Tensor]:
        """The tensors named in ``shapes``, checked: none missing, none unknown (but ``ignored``), right shapes.

        ``what`` names the SAE class the file is read as, for messages.
        """
        missing = [name for name in shapes if name not in tensors]
        if missing:
            raise self.refuse(
                f"it lacks tensor(s) {', '.join(map(repr, missing))} of {what} (it holds {_names(tensors)})",
                "the file is incomplete, or another architecture or library: give `format` in the SAE params if "
                "detection guessed wrong",
            )
        unknown = [name for name in tensors if name not in shapes and name not in ignored]
        if unknown:
            raise self.refuse(
                f"it holds tensor(s) {', '.join(map(repr, unknown))} that {what} does not have (expected "
                f"{', '.join(map(repr, shapes))})",
                "it is another architecture, a training checkpoint, or an altered file; load the inference "
                "checkpoint the library saves at the end of training",
            )
        for name, shape in shapes.items():
            if tuple(tensors[name].shape) != tuple(shape):
                raise self.refuse(
                    f"tensor {name!r} has shape {list(tensors[name].shape)} but {what} of these sizes needs "
                    f"{list(shape)}",
                    "the file or its config was altered: copy it again",
                )
        return {name: tensors[name] for name in shapes}

    def refuse(self, problem: str, fix: str) -> SAEFileError:
        """An :class:`SAEFileError` naming the checkpoint, the problem and the fix."""
        return SAEFileError(f"{self.source} ({self.format} checkpoint): {problem}; {fix}")


def matrix(tensors: Mapping[str, torch.Tensor], name: str, reading: Reading) -> torch.Tensor:
    """Tensor ``name``, which must exist and be a matrix (the sizes of an SAE are read from it)."""
    if name not in tensors:
        raise reading.refuse(
            f"it has no tensor {name!r} (it holds {_names(tensors)})",
            "the file is incomplete or of another format: give `format` in the SAE params if detection guessed wrong",
        )
    tensor = tensors[name]
    if tensor.dim() != 2:
        raise reading.refuse(f"tensor {name!r} has shape {list(tensor.shape)}, not a matrix", "the file is damaged")
    return tensor


def assemble(recipe: Recipe, reading: Reading) -> Any:
    """Build the SAE a recipe describes, settling layer, site and tokens against the params.

    Raises
    ------
    SAEConfigError
        If a param contradicts the checkpoint, a required param is missing, or a param does not apply.
    SAEFileError
        For a missing, unexpected, misshapen, non-float or non-finite tensor.
    """
    from ..io import sae_from_config

    request, source = reading.request, reading.source
    unused = [name for name in OPTION_NAMES if getattr(request, name) is not None and name not in reading.consumed]
    if unused:
        raise SAEConfigError(
            f"{', '.join(unused)} {'does' if len(unused) == 1 else 'do'} not apply to {source}, a {reading.format} "
            f"checkpoint of a {recipe.architecture} SAE; remove {'it' if len(unused) == 1 else 'them'} from the SAE "
            "params"
        )
    layer = _settle_place("layer", recipe.layer, request.layer, source, recipe.hook)
    site = _settle_place("site", recipe.site, request.site, source, recipe.hook) or DEFAULT_SITE
    tokens = _settle_place("tokens", recipe.tokens, request.tokens, source, None)
    if tokens is None:
        raise SAEConfigError(
            f"{source} does not record which tokens the SAE was trained on ({reading.format} checkpoints do not); "
            'set tokens = "patch", "cls" or "all" in the SAE params'
        )
    w_e = recipe.tensors["W_e"]
    config = CheckpointConfig(
        architecture=recipe.architecture,
        d_in=int(w_e.shape[1]),
        d_sae=int(w_e.shape[0]),
        layer=layer,
        site=site,
        tokens=tokens,
        extra=recipe.extra,
        **recipe.options,
    )
    check_consistency(config, source)
    dtype = recipe.dtype or w_e.dtype
    # a foreign tensor may stand for two of cafe's (b_dec is both b_d and b_h): give each its own memory
    tensors = {name: tensor.to(dtype).clone() for name, tensor in recipe.tensors.items()}
    return sae_from_config(config, tensors, source, sizes_from="its encoder")


def _settle_place(name: str, recorded: Any, requested: Any, source: Path | str, hook: str | None) -> Any:
    if recorded is None or requested is None or recorded == requested:
        return recorded if recorded is not None else requested
    where = f" (it reads {hook})" if hook else ""
    if name == "layer":
        fix = (f"set the SAE's layer to {recorded} (and read that block), or use an SAE trained on layer "
               f"{requested}")
        raise SAEConfigError(f"the params give layer {requested} but {source} was trained on layer {recorded}{where}; "
                             f"{fix}")
    raise SAEConfigError(
        f"the params give {name} {requested!r} but {source} was trained on {name} {recorded!r}{where}; set {name} "
        f"to {recorded!r}, or remove it from the params"
    )


def _names(tensors: Mapping[str, Any]) -> str:
    names = sorted(tensors)
    shown = ", ".join(repr(n) for n in names[:10])
    return (shown + f" and {len(names) - 10} more") if len(names) > 10 else (shown or "no tensors")
