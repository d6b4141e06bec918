"""The JSON config of a cafe SAE checkpoint, in both format versions.

Version 2 (written by :func:`cafe_sae.io.save`)::

    {"format_version": 2, "architecture": "relu" | "topk" | "jumprelu" | "gated", "d_in": 768, "d_sae": 24576,
     "layer": 10 | null, "site": "resid_post", "tokens": "patch" | "cls" | "all", "nonlinearity": "...",
     "k": 32, "relu_after_topk": true, "rescale_by_decoder_norm": false,          (topk only)
     "threshold_inclusive": false,                                                  (jumprelu only)
     "normalization": "none" | "layer_norm" | "constant_norm" | "shift_scale",
     "input_scalar": 1.0,                                                           (shift_scale only)
     "extra": {...free information...}}

Version 1 (relu and topk only) names the token set ``site`` and the nonlinearity ``activation``, and has no
normalisation; it reads as version 2 with ``site = "resid_post"``, no normalisation, a ReLU after TopK and no
decoder-norm rescaling, so its latents are those it always had. Importing this module does not import torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import SAEFileError

__all__ = [
    "ARCHITECTURE_NAMES", "CONFIG_KEY", "FORMAT_VERSION", "CheckpointConfig", "check_consistency", "parse_config",
]

CONFIG_KEY = "cafe_sae"
FORMAT_VERSION = 2
ARCHITECTURE_NAMES = ("relu", "topk", "jumprelu", "gated")
RESAVE = "re-save it with cafe_sae.io.save (or copy the file again if it was cut short)"

_TOPK_FIELDS = ("k", "relu_after_topk", "rescale_by_decoder_norm")
_JUMPRELU_FIELDS = ("threshold_inclusive",)


class CheckpointConfig(BaseModel):
    """The validated config of a checkpoint (version 1 configs are read into this version-2 form)."""

    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1, 2] = FORMAT_VERSION
    architecture: Literal["relu", "topk", "jumprelu", "gated"]
    d_in: int = Field(gt=0)
    d_sae: int = Field(gt=0)
    layer: int | None = Field(default=None, ge=0)
    site: str = Field(default="resid_post", min_length=1)
    tokens: Literal["patch", "cls", "all"]
    nonlinearity: str | None = None
    k: int | None = Field(default=None, gt=0)
    relu_after_topk: bool | None = None
    rescale_by_decoder_norm: bool | None = None
    threshold_inclusive: bool | None = None
    normalization: Literal["none", "layer_norm", "constant_norm", "shift_scale"] = "none"
    input_scalar: float | None = Field(default=None, gt=0)
    extra: dict[str, Any] = Field(default_factory=dict)

    def constructor_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the SAE class of :attr:`architecture` (besides ``d_in`` and ``d_sae``)."""
        kwargs: dict[str, Any] = {
            "layer": self.layer,
            "tokens": self.tokens,
            "site": self.site,
            "normalization": self.normalization,
            "input_scalar": self.input_scalar,
            "extra": dict(self.extra),
        }
        if self.architecture == "topk":
            kwargs.update(k=self.k, relu_after_topk=self.relu_after_topk,
                          rescale_by_decoder_norm=self.rescale_by_decoder_norm)
        if self.architecture == "jumprelu":
            kwargs["threshold_inclusive"] = self.threshold_inclusive
        return kwargs


class _Version1(BaseModel):
    """Version 1, exactly as it was written."""

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

    def upgraded(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format_version": 1,
            "architecture": self.architecture,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "layer": self.layer,
            "tokens": self.site,
            "nonlinearity": self.activation,
            "k": self.k,
            "extra": self.extra,
        }
        if self.architecture == "topk":
            data.update(relu_after_topk=True, rescale_by_decoder_norm=False)
        return data


def parse_config(raw: str | dict[str, Any], source: Path | str) -> CheckpointConfig:
    """Validate a checkpoint config (JSON text or dict) of either version.

    Raises
    ------
    SAEFileError
        Naming ``source``, the problem and the fix: not JSON, not an object, an unknown version, an invalid or
        self-contradicting field.
    """
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SAEFileError(
                f"the {CONFIG_KEY!r} config in the header of {source} is not valid JSON ({exc}); {RESAVE}"
            ) from None
    if not isinstance(raw, dict):
        raise SAEFileError(f"the {CONFIG_KEY!r} config of {source} is a {type(raw).__name__}, not an object; {RESAVE}")
    version = raw.get("format_version")
    if version not in (1, FORMAT_VERSION):
        newer = isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION
        fix = "upgrade cafe-plugin-sae (pip install -U cafe-plugin-sae)" if newer else RESAVE
        raise SAEFileError(
            f"{source} has SAE config format_version {version!r}, but this cafe-plugin-sae reads versions 1 to "
            f"{FORMAT_VERSION}; {fix}"
        )
    try:
        data = _Version1.model_validate(raw).upgraded() if version == 1 else raw
        config = CheckpointConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<config>'}: {e['msg']}" for e in exc.errors())
        tokens_key = "site" if version == 1 else "tokens"
        raise SAEFileError(
            f"the {CONFIG_KEY!r} config of {source} is invalid ({problems}); expected architecture in "
            f"{list(ARCHITECTURE_NAMES)}, positive d_in/d_sae, layer >= 0 or null, {tokens_key} in "
            f"['patch', 'cls', 'all']: {RESAVE}"
        ) from None
    check_consistency(config, source)
    return config


def check_consistency(config: CheckpointConfig, source: Path | str) -> None:
    """Check the architecture-specific fields of ``config`` (raises :class:`SAEFileError` naming ``source``)."""
    architecture = config.architecture
    own = {"topk": _TOPK_FIELDS, "jumprelu": _JUMPRELU_FIELDS}.get(architecture, ())
    specific = _TOPK_FIELDS + _JUMPRELU_FIELDS
    foreign = [name for name in specific if name not in own and getattr(config, name) is not None]
    if foreign:
        raise SAEFileError(
            f"the config of {source} gives {', '.join(map(repr, foreign))} for a {architecture} SAE; {RESAVE}"
        )
    missing = [name for name in own if getattr(config, name) is None]
    if missing:
        raise SAEFileError(
            f"the config of {source} describes a {architecture} SAE but gives no {', '.join(map(repr, missing))}; "
            f"{RESAVE}"
        )
    if architecture == "topk" and config.k > config.d_sae:
        raise SAEFileError(f"the config of {source} gives k={config.k}, more than its d_sae={config.d_sae}; {RESAVE}")
    if config.nonlinearity is not None and config.nonlinearity != architecture:
        key = "activation" if config.format_version == 1 else "nonlinearity"
        raise SAEFileError(
            f"the config of {source} contradicts itself: architecture {architecture!r} but {key} "
            f"{config.nonlinearity!r}; {RESAVE}"
        )
    if (config.normalization == "shift_scale") != (config.input_scalar is not None):
        raise SAEFileError(
            f"the config of {source} gives normalization {config.normalization!r} with input_scalar "
            f"{config.input_scalar!r}; 'input_scalar' belongs with 'shift_scale' normalization and only there: "
            f"{RESAVE}"
        )
