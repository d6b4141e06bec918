"""The training spec: which backbone and images, which SAE, and how to train it.

A TOML file (or dict) with four sections::

    [backbone]            # exactly as in a run spec: name + the component's params
    name = "timm"
    model = "vit_base_patch16_224"
    pretrained = true

    [dataset]             # exactly as in a run spec
    name = "folder"
    path = "images"       # relative paths start at the spec file's folder

    [sae]
    layer = 10
    tokens = "patch"
    architecture = "topk"
    expansion = 16
    k = 32

    [training]
    steps = 20000

Components are resolved through the plugin registry with cafe's spec machinery; every problem in every
section is reported at once (:class:`cafe_core.errors.SpecError`).
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cafe_core.errors import SpecError, validation_problems
from cafe_core.resolve import build_component, resolve_component, resolve_device
from cafe_core.spec import ComponentSpec, check_device_name, read_spec_source, renamed_key

from ..params import move_deprecated_site

__all__ = ["SAESection", "TrainingPlan", "TrainingSection", "TrainingSpec", "load_training_spec", "prepare_training"]

_SECTIONS = ("backbone", "dataset", "sae", "training")


class SAESection(BaseModel):
    """The ``[sae]`` section: where the SAE reads and what it is.

    Attributes
    ----------
    layer : int
        Block whose output it reads.
    tokens : {"patch", "cls", "all"}
        Tokens it is trained on (``site``, the old name of this key, still works with a DeprecationWarning).
    architecture : {"relu", "topk"}
        The SAE.
    d_sae, expansion : optional
        Number of latents, or its ratio to the backbone's width; give exactly one.
    l1_coefficient : float
        ``lambda`` of the ReLU loss (ReLU only, required).
    k : int
        Latents kept per token (TopK only, required).
    """

    model_config = ConfigDict(extra="forbid")

    layer: int = Field(ge=0)
    tokens: Literal["patch", "cls", "all"] = "patch"
    architecture: Literal["relu", "topk"] = "relu"
    d_sae: int | None = Field(default=None, ge=1)
    expansion: float | None = Field(default=None, gt=0)
    l1_coefficient: float | None = Field(default=None, ge=0)
    k: int | None = Field(default=None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _deprecated_site(cls, data: Any) -> Any:
        return move_deprecated_site(data, "[sae]")

    @model_validator(mode="after")
    def _consistent(self) -> "SAESection":
        problems = []
        if (self.d_sae is None) == (self.expansion is None):
            problems.append("give exactly one of `d_sae` (number of latents) and `expansion` (d_sae / width)")
        if self.architecture == "relu":
            if self.l1_coefficient is None:
                problems.append("a relu SAE needs `l1_coefficient`")
            if self.k is not None:
                problems.append("`k` applies to architecture = 'topk' only")
        else:
            if self.k is None:
                problems.append("a topk SAE needs `k`")
            elif self.d_sae is not None and self.k > self.d_sae:
                problems.append(f"k = {self.k} is more than d_sae = {self.d_sae}")
            if self.l1_coefficient is not None:
                problems.append("`l1_coefficient` applies to architecture = 'relu' only")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class TrainingSection(BaseModel):
    """The ``[training]`` section (see :func:`cafe_sae.training.trainer.train_sae` for the meanings).

    Attributes
    ----------
    steps, epochs : optional
        Length of training; give exactly one.
    batch_size : int
        Tokens per step.
    lr : float
        Adam learning rate.
    seed : int
        Seed of the backbone's random weights (if any), the SAE's initial weights and the shuffling.
    l1_warmup_steps, bias_init, eval_tokens, eval_every, log_every, shards_in_memory
        As in ``train_sae``.
    shard_tokens : int
        Tokens per activation shard.
    image_batch_size : int
        Images per forward pass while collecting activations.
    checkpoint_every : int
        Steps between checkpoints.
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    limit : int, optional
        Use only the first ``limit`` images.
    """

    model_config = ConfigDict(extra="forbid")

    steps: int | None = Field(default=None, ge=1)
    epochs: float | None = Field(default=None, gt=0)
    batch_size: int = Field(default=4096, ge=1)
    lr: float = Field(default=4e-4, gt=0)
    seed: int = Field(default=0, ge=0)
    l1_warmup_steps: int = Field(default=0, ge=0)
    bias_init: Literal["median", "mean", "zero"] = "median"
    shard_tokens: int = Field(default=65536, ge=1)
    image_batch_size: int = Field(default=32, ge=1)
    checkpoint_every: int = Field(default=1000, ge=1)
    eval_every: int | None = Field(default=None, ge=1)
    eval_tokens: int = Field(default=4096, ge=2)
    log_every: int = Field(default=100, ge=1)
    shards_in_memory: int = Field(default=4, ge=1)
    device: str = "auto"
    limit: int | None = Field(default=None, ge=1)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return check_device_name(value)

    @model_validator(mode="after")
    def _length(self) -> "TrainingSection":
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of `steps` and `epochs`")
        return self


class TrainingSpec(BaseModel):
    """A whole training spec (see the module documentation for the TOML form)."""

    model_config = ConfigDict(extra="forbid")

    backbone: ComponentSpec
    dataset: ComponentSpec
    sae: SAESection
    training: TrainingSection

    def canonical(self) -> dict[str, Any]:
        """Plain data form, used to store and compare specs."""
        return json.loads(self.model_dump_json())


def _read(source: Any) -> tuple[dict[str, Any], pathlib.Path]:
    if isinstance(source, TrainingSpec):
        return source.canonical(), pathlib.Path.cwd()
    return read_spec_source(source)


def _sections(raw: dict[str, Any]) -> tuple[dict[str, BaseModel], list[tuple[str, str]]]:
    """Each section validated on its own, so a broken one does not hide the problems of the others."""
    models = {"backbone": ComponentSpec, "dataset": ComponentSpec, "sae": SAESection, "training": TrainingSection}
    try:
        raw = renamed_key(raw, "data", "dataset", "training spec")
    except ValueError as exc:
        return {}, [("dataset", str(exc))]
    problems = [(key, f"unknown section; expected only {list(_SECTIONS)}") for key in raw if key not in models]
    parts: dict[str, BaseModel] = {}
    for key, model in models.items():
        if key not in raw:
            problems.append((key, f"missing section [{key}]"))
            continue
        try:
            parts[key] = model.model_validate(raw[key])
        except ValidationError as exc:
            problems.extend(validation_problems(exc, key))
    return parts, problems


def load_training_spec(source: TrainingSpec | dict[str, Any] | str | pathlib.Path) -> tuple[TrainingSpec, pathlib.Path]:
    """Parse and check the structure of a training spec (components are neither resolved nor built).

    Returns
    -------
    spec : TrainingSpec
    base_dir : pathlib.Path
        Where relative paths in component params start: the spec file's folder, or the working directory.

    Raises
    ------
    SpecError
        Every structural problem, each with its path in the spec.
    """
    raw, base_dir = _read(source)
    parts, problems = _sections(raw)
    if problems:
        raise SpecError(problems, "training spec")
    return TrainingSpec(**parts), base_dir


@dataclass
class TrainingPlan:
    """A checked training spec with its components built.

    Attributes
    ----------
    spec : TrainingSpec
    backbone, dataset
        The built components.
    device : torch.device
        Where collection and training run.
    d_sae : int
        Number of latents (``expansion`` resolved against the backbone's width).
    source : dict
        The backbone and data sections with validated params, recorded with the activations.
    """

    spec: TrainingSpec
    backbone: Any
    dataset: Any
    device: Any
    d_sae: int
    source: dict[str, Any]


def prepare_training(source: TrainingSpec | dict[str, Any] | str | pathlib.Path, host: Any = None) -> TrainingPlan:
    """Validate a training spec, resolve and build its backbone and dataset, and check them against ``[sae]``.

    Raises
    ------
    SpecError
        Every problem found, each with its path: unknown sections or keys, bad values, unknown component
        names, invalid component params, a layer past the backbone's depth, a token set the backbone lacks, an
        unavailable device.
    """
    import torch

    from cafe_core.plugins import get_host

    host = host or get_host()
    raw, base_dir = _read(source)
    parts, problems = _sections(raw)
    resolved = {}
    for section, kind in (("backbone", "backbone"), ("dataset", "dataset")):
        if section in parts:
            entry, found = resolve_component(section, kind, parts[section], host, base_dir)
            problems.extend(found)
            if entry is not None:
                resolved[section] = entry
    device = None
    if "training" in parts:
        device, found = resolve_device(parts["training"].device, "training.device")
        problems.extend(found)
        torch.manual_seed(parts["training"].seed)  # before building: random backbone weights repeat on a rerun
    built = {section: build_component(entry, problems) for section, entry in resolved.items()}
    backbone, dataset = built.get("backbone"), built.get("dataset")
    d_sae = 0
    if backbone is not None and "sae" in parts:
        d_sae, found = _check_against_backbone(parts["sae"], backbone)
        problems.extend(found)
    if dataset is not None and len(dataset) == 0:
        problems.append(("dataset", "the dataset holds no images"))
    if problems:
        raise SpecError(problems, "training spec")
    spec = TrainingSpec(**parts)
    source_description = {
        section: {"name": entry.registration.name, **entry.params.model_dump(mode="json")}
        for section, entry in resolved.items()
    }
    return TrainingPlan(spec, backbone, dataset, device, d_sae, source_description)


def _check_against_backbone(sae: SAESection, backbone: Any) -> tuple[int, list[tuple[str, str]]]:
    problems = []
    depth = int(backbone.depth)
    if sae.layer >= depth:
        problems.append(
            ("sae.layer", f"layer {sae.layer} is past the backbone's {depth} blocks (valid: 0..{depth - 1}, the output "
             "of that block)")
        )
    if sae.tokens == "cls" and "cls" not in tuple(backbone.prefix_tokens):
        problems.append(
            ("sae.tokens", f"tokens 'cls' needs a class token, but the backbone's prefix tokens are "
             f"{list(backbone.prefix_tokens)}; use 'patch' or 'all'")
        )
    width = int(backbone.width)
    d_sae = sae.d_sae if sae.d_sae is not None else int(round(sae.expansion * width))
    if d_sae < 1:
        problems.append(("sae.expansion", f"expansion {sae.expansion} of width {width} leaves no latents"))
    elif sae.k is not None and sae.k > d_sae:
        problems.append(("sae.k", f"k = {sae.k} is more than the {d_sae} latents"))
    return d_sae, problems
