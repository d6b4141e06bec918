"""Parameter models of the registered SAEs (validated before anything heavy is imported)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["RandomSAEParams", "ReluSAEParams", "SAEFileParams", "TopKSAEParams"]


class SAEFileParams(BaseModel):
    """Parameters of the ``"file"`` SAE: a checkpoint written by :func:`cafe_sae.io.save`.

    Attributes
    ----------
    path : pathlib.Path
        The checkpoint file; must exist.
    layer : int, optional
        Block the SAE reads. If the checkpoint records another layer, loading fails naming both; if it records
        none, this one is used.
    site : {"patch", "cls", "all"}, optional
        Tokens the SAE was trained on; checked or filled in like ``layer``.
    """

    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="SAE checkpoint file (.safetensors)")
    layer: int | None = Field(default=None, ge=0, description="block whose output the SAE reads")
    site: Literal["patch", "cls", "all"] | None = Field(default=None, description="tokens it was trained on")

    @field_validator("path")
    @classmethod
    def _path_exists(cls, value: Path) -> Path:
        value = value.expanduser()
        if not value.exists():
            raise ValueError(
                f"SAE checkpoint {value} does not exist; check the path (in a spec file, relative paths start at "
                "the spec file's folder)"
            )
        if value.is_dir():
            raise ValueError(f"SAE checkpoint {value} is a directory; give the path of the checkpoint file in it")
        return value


class ReluSAEParams(SAEFileParams):
    """Parameters of the ``"relu"`` SAE: a checkpoint, or a plain state dict (see :mod:`cafe_sae.layouts`).

    Attributes
    ----------
    subtract_decoder_bias : bool, optional
        Plain state dicts with a single ``b_dec`` only: whether it is subtracted from the input before
        encoding (default True).
    """

    subtract_decoder_bias: bool | None = Field(
        default=None, description="W_enc/W_dec state dicts: subtract b_dec from the input (default true)"
    )


class TopKSAEParams(ReluSAEParams):
    """Parameters of the ``"topk"`` SAE.

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
    seed : int
        Seed of the weights.
    architecture : {"relu", "topk"}
        Which SAE to draw.
    k : int, optional
        Latents kept per row (``topk`` only).
    """

    model_config = ConfigDict(extra="forbid")

    d_in: int = Field(ge=1, description="token width of the backbone")
    d_sae: int = Field(ge=1, description="number of latents")
    layer: int = Field(ge=0, description="block whose output the SAE reads")
    seed: int = 0
    architecture: Literal["relu", "topk"] = "relu"
    k: int | None = Field(default=None, ge=1, description="latents kept per row (topk only)")

    @model_validator(mode="after")
    def _k_only_for_topk(self) -> "RandomSAEParams":
        if self.architecture == "topk" and self.k is None:
            raise ValueError("a random topk SAE needs k")
        if self.architecture == "relu" and self.k is not None:
            raise ValueError("k applies to architecture = 'topk' only")
        return self
