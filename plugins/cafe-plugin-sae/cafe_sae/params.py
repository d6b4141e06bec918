"""Parameter models of the registered SAEs: the one place where SAE params are validated.

They are checked before anything heavy is imported (no torch). Loaders and constructors trust what these models
let through; what can only be known from the checkpoint (a k that contradicts it, a missing option the file
cannot hold) is checked when the SAE is built, which ``cafe validate`` does too.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .formats import FORMAT_NAMES
from .location import check_location

__all__ = ["RandomSAEParams", "ReluSAEParams", "SAEFileParams", "TopKSAEParams", "move_deprecated_site"]

TokenSet = Literal["patch", "cls", "all"]
_TOKEN_SETS = ("patch", "cls", "all")


def move_deprecated_site(data: Any, where: str = "SAE param") -> Any:
    """``site = "patch"`` (the old name of the token set) -> ``tokens = "patch"``, with a DeprecationWarning.

    For a ``mode="before"`` model validator of any params model that takes ``tokens``; a ``site`` that names
    no token set (``"resid_post"``...) is a hook point and left alone.
    """
    if isinstance(data, dict) and data.get("site") in _TOKEN_SETS:
        data = dict(data)
        value = data.pop("site")
        warnings.warn(
            f'{where} `site = "{value}"` names the tokens the SAE was trained on; that param is now `tokens` '
            f'(`site` is the hook point within the block, such as "resid_post"): write `tokens = "{value}"`',
            DeprecationWarning,
            stacklevel=3,
        )
        if data.get("tokens") not in (None, value):
            raise ValueError(f"site = {value!r} (the old name of `tokens`) contradicts tokens = {data['tokens']!r}")
        data["tokens"] = value
    return data


class _WhereItReads(BaseModel):
    """Layer, site and tokens: checked against the checkpoint where it records them, required where not."""

    model_config = ConfigDict(extra="forbid")

    layer: int | None = Field(default=None, ge=0, description="block whose output the SAE reads")
    tokens: TokenSet | None = Field(default=None, description='tokens it was trained on: "patch", "cls" or "all"')
    site: str | None = Field(
        default=None, min_length=1, pattern=r"^[A-Za-z0-9_.]+$",
        description='hook point within the block ("resid_post", the block output, by default)',
    )

    @model_validator(mode="before")
    @classmethod
    def _deprecated_site(cls, data: Any) -> Any:
        return move_deprecated_site(data)


class _CheckpointParams(_WhereItReads):
    """What every checkpoint-reading SAE takes; see :class:`SAEFileParams`."""

    path: str | Path = Field(description="checkpoint file or folder, or hf://owner/repo/path")
    format: Literal[("auto",) + FORMAT_NAMES] = Field(  # type: ignore[valid-type]
        default="auto", description="checkpoint format; detected from the path by default"
    )
    subtract_decoder_bias: bool | None = Field(
        default=None, description="subtract the decoder bias from the input (saev, plain W_enc/W_dec state dicts)"
    )
    input_mean: float | Path | None = Field(
        default=None, description="saev: mean subtracted from activations (file of the vector, or a number)"
    )
    input_scalar: float | None = Field(default=None, gt=0, description="saev: activations are divided by it")

    @field_validator("path", mode="before")
    @classmethod
    def _located(cls, value: Any) -> Any:
        if not isinstance(value, (str, Path)):
            return value
        return check_location(value)

    @field_validator("input_mean")
    @classmethod
    def _mean_file_exists(cls, value: float | Path | None) -> float | Path | None:
        if isinstance(value, Path) and not value.expanduser().is_file():
            raise ValueError(f"input_mean file {value} does not exist; give the file holding the mean vector, or 0")
        return value.expanduser() if isinstance(value, Path) else value


class SAEFileParams(_CheckpointParams):
    """Parameters of the ``"file"`` SAE: a checkpoint of any supported format, detected from its path.

    Attributes
    ----------
    path : str or pathlib.Path
        A checkpoint file or folder, or ``hf://owner/repo[@revision]/path`` on the Hugging Face Hub.
    format : str
        ``"auto"`` (detect), or one of ``cafe``, ``saelens``, ``saev``, ``prisma``, ``dictionary_learning``,
        ``overcomplete``, ``state_dict``.
    layer : int, optional
        Block the SAE reads. Checked against the checkpoint where it records one (a different value is an error
        naming both); required where it does not.
    tokens : {"patch", "cls", "all"}, optional
        Tokens it was trained on; checked or required like ``layer``.
    site : str, optional
        Hook point within the block; checked like ``layer``, ``"resid_post"`` where neither says.
    architecture : {"relu", "topk", "jumprelu", "gated"}, optional
        Checked against the checkpoint; needed for state dicts that do not record it.
    k : int, optional
        Latents kept by a TopK SAE; checked against the checkpoint, needed where it is not saved (overcomplete).
    subtract_decoder_bias : bool, optional
        Whether the decoder bias is subtracted from the input before encoding, for formats where the file does
        not settle it (saev, ``W_enc``/``W_dec`` state dicts); checked against formats that record it.
    input_mean : float or pathlib.Path, optional
        saev: the mean subtracted from activations before training (a file holding the vector, or a number for
        every feature; ``0`` for raw activations).
    input_scalar : float, optional
        saev: the scalar activations were divided by (``1`` for raw activations); SAELens
        ``expected_average_only_in``: ``1 / scaling_factor`` when ``activation_scaler.json`` is missing.
    """

    architecture: Literal["relu", "topk", "jumprelu", "gated"] | None = Field(
        default=None, description="checked against the checkpoint; needed for plain state dicts"
    )
    k: int | None = Field(default=None, ge=1, description="latents kept per row (TopK)")


class ReluSAEParams(_CheckpointParams):
    """Parameters of the ``"relu"`` SAE: those of ``"file"`` (:class:`SAEFileParams`) for a ReLU SAE."""


class TopKSAEParams(_CheckpointParams):
    """Parameters of the ``"topk"`` SAE: those of ``"file"`` (:class:`SAEFileParams`) for a TopK SAE.

    Attributes
    ----------
    k : int, optional
        Latents kept per row. Required for plain state dicts; checked against a checkpoint's config otherwise.
    """

    k: int | None = Field(default=None, ge=1, description="latents kept per row")


class RandomSAEParams(BaseModel):
    """Parameters of the ``"random"`` SAE: an untrained dictionary drawn from a seed.

    A randomly initialised SAE is the model-randomisation sanity check of attribution work: explanations of
    its latents must not look like those of a trained one. It also lets a run exercise the whole pipeline
    before any SAE is trained.

    Attributes
    ----------
    d_in : int
        Width of the backbone's tokens.
    d_sae : int
        Number of latents.
    layer : int
        Block whose output it reads.
    tokens : {"patch", "cls", "all"}
        Tokens it stands for.
    seed : int
        Seed of the weights.
    architecture : {"relu", "topk"}
        Which SAE to draw.
    k : int, optional
        Latents kept per row (``topk`` only, at most ``d_sae``).
    """

    model_config = ConfigDict(extra="forbid")

    d_in: int = Field(ge=1, description="token width of the backbone")
    d_sae: int = Field(ge=1, description="number of latents")
    layer: int = Field(ge=0, description="block whose output the SAE reads")
    tokens: TokenSet = Field(default="patch", description="tokens it stands for")
    seed: int = 0
    architecture: Literal["relu", "topk"] = "relu"
    k: int | None = Field(default=None, ge=1, description="latents kept per row (topk only)")

    @model_validator(mode="before")
    @classmethod
    def _deprecated_site(cls, data: Any) -> Any:
        return move_deprecated_site(data)

    @model_validator(mode="after")
    def _k_only_for_topk(self) -> "RandomSAEParams":
        if self.architecture == "topk" and self.k is None:
            raise ValueError("a random topk SAE needs k")
        if self.architecture == "relu" and self.k is not None:
            raise ValueError("k applies to architecture = 'topk' only")
        if self.k is not None and self.k > self.d_sae:
            raise ValueError(f"k = {self.k} is more than d_sae = {self.d_sae}")
        return self
