"""The run spec: what to explain, with which components, and how to run it.

A spec is a TOML file or a dict with one section per component kind. A component section holds ``name``
(the registered component), an optional ``label`` (the name in result tables; needed when one method appears
twice with different params) and the component's own params, validated against the params model the plugin
declared. See the README for a walkthrough.
"""

from __future__ import annotations

import json
import pathlib
import sys
import types
import typing
import warnings
from dataclasses import dataclass
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import CafeError, SpecError, UnknownComponentError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "ComponentSpec",
    "ResolvedComponent",
    "RunSection",
    "RunSpec",
    "TargetsSpec",
    "anchor_paths",
    "build_component",
    "check_device_name",
    "load_spec",
    "read_spec_source",
    "resolve",
    "resolve_component",
    "resolve_device",
    "resolve_partially",
    "validation_problems",
]

_RESERVED = ("name", "label")


class ComponentSpec(BaseModel):
    """A component section: ``name``, optional ``label``, and the component's params as extra keys."""

    model_config = ConfigDict(extra="allow")

    name: str
    label: str | None = None
    optional: bool = False

    @property
    def params(self) -> dict[str, Any]:
        """The component's own params (everything but ``name``, ``label`` and ``optional``)."""
        return dict(self.model_extra or {})

    @property
    def display_name(self) -> str:
        """The name used in result tables."""
        return self.label or self.name


class TargetsSpec(BaseModel):
    """Which latents to explain on each image, and at which token.

    Attributes
    ----------
    latents : list of int, optional
        Explicit latent indices.
    select : {"top", "random"}, optional
        Instead of ``latents``: per image, the ``count`` most active latents, or ``count`` latents drawn at
        random (seeded) among those active at the chosen position.
    count : int, optional
        How many latents ``select`` picks per image.
    position : "argmax", "cls", a prefix-token name, or an int
        ``"argmax"``: the patch token where the latent is largest on that image. ``"cls"`` (or ``"reg0"``...):
        that prefix token. An int: that index in the token sequence.
    min_activation : float
        A target whose latent is at most this on its token is recorded as inactive and not explained.
    """

    model_config = ConfigDict(extra="forbid")

    latents: list[int] | None = None
    select: Literal["top", "random"] | None = None
    count: int | None = Field(default=None, ge=1)
    position: Union[int, str] = "argmax"
    min_activation: float = Field(default=0.0, ge=0.0)

    @field_validator("latents")
    @classmethod
    def _nonnegative(cls, value: list[int] | None) -> list[int] | None:
        if value is not None:
            if not value:
                raise ValueError("latents must not be empty")
            bad = [n for n in value if n < 0]
            if bad:
                raise ValueError(f"latent indices must be >= 0, got {bad}")
        return value

    @model_validator(mode="after")
    def _one_rule(self) -> "TargetsSpec":
        if (self.latents is None) == (self.select is None):
            raise ValueError("give exactly one of `latents = [...]` or `select = \"top\" | \"random\"` with `count`")
        if self.select is not None and self.count is None:
            raise ValueError(f"select = {self.select!r} needs `count` (latents per image)")
        if isinstance(self.position, int) and self.position < 0:
            raise ValueError("position index must be >= 0")
        return self


class RunSection(BaseModel):
    """How to execute: batching, device, dtype, seed, and how many images."""

    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(default=16, ge=1)
    device: str = "auto"
    dtype: Literal["float32", "float64"] = "float32"
    seed: int = 0
    limit: int | None = Field(default=None, ge=1)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return check_device_name(value)


class RunSpec(BaseModel):
    """A whole run spec (see the README for the TOML form)."""

    model_config = ConfigDict(extra="forbid")

    backbone: ComponentSpec
    sae: list[ComponentSpec] = Field(min_length=1)
    data: ComponentSpec
    targets: list[TargetsSpec] = Field(min_length=1)
    attributors: list[ComponentSpec] = Field(min_length=1)
    metrics: list[ComponentSpec] = Field(default_factory=list)
    run: RunSection = Field(default_factory=RunSection)

    @field_validator("sae", "targets", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _unique_labels(self) -> "RunSpec":
        for section in ("attributors", "metrics"):
            labels = [c.display_name for c in getattr(self, section)]
            repeated = sorted({x for x in labels if labels.count(x) > 1})
            if repeated:
                raise ValueError(
                    f"{section} {repeated} appear more than once; give each a distinct `label`"
                )
        return self

    def canonical(self) -> dict[str, Any]:
        """Plain data form (paths as strings), used to store and compare specs."""
        return json.loads(self.model_dump_json())


def check_device_name(value: str) -> str:
    """Validate a device setting: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``... (raises ``ValueError``)."""
    if value != "auto":
        import torch

        try:
            torch.device(value)
        except RuntimeError as exc:
            raise ValueError(f"{exc}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    return value


def resolve_device(value: str, path: str = "run.device") -> tuple[Any, list[tuple[str, str]]]:
    """The :class:`torch.device` of a device setting (``"auto"`` picks CUDA when available).

    Returns
    -------
    device : torch.device or None
    problems : list of (path, message)
        Non-empty when CUDA is requested but unavailable.
    """
    import torch

    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu"), []
    if value.startswith("cuda") and not torch.cuda.is_available():
        return None, [(path, f"{value!r} requested but CUDA is not available; use 'auto' or 'cpu'")]
    return torch.device(value), []


def _error_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def validation_problems(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """``(path, message)`` pairs of a pydantic error, paths prefixed with ``prefix`` (a spec section)."""
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if p not in ("function-after", "function-before"))
        path = _error_path(loc)
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key; remove it or check its spelling"
        elif "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], dict):
            message += f" (got {err['input']!r})"
        problems.append((path, message))
    return problems


def read_spec_source(source: dict[str, Any] | str | pathlib.Path) -> tuple[dict[str, Any], pathlib.Path]:
    """Raw spec data and the directory relative paths start from (a TOML file's folder, or the cwd).

    Raises
    ------
    SpecError
        For a missing file or invalid TOML.
    """
    if isinstance(source, dict):
        return source, pathlib.Path.cwd()
    if isinstance(source, (str, pathlib.Path)):
        path = pathlib.Path(source)
        try:
            return tomllib.loads(path.read_text(encoding="utf-8")), path.resolve().parent
        except FileNotFoundError:
            raise SpecError([("", f"spec file {str(path)!r} does not exist")]) from None
        except tomllib.TOMLDecodeError as exc:
            raise SpecError([("", f"{path} is not valid TOML: {exc}")]) from None
    raise TypeError(f"a spec is a dict or a path to a TOML file, not {type(source).__name__}")


def load_spec(source: RunSpec | dict[str, Any] | str | pathlib.Path) -> tuple[RunSpec, pathlib.Path]:
    """Parse a spec from a TOML path, a dict or a :class:`RunSpec`.

    Returns
    -------
    spec : RunSpec
    base_dir : pathlib.Path
        Directory that relative paths in component params are taken from (the spec file's directory, or the
        working directory).

    Raises
    ------
    SpecError
        Listing every structural problem with its path in the spec.
    """
    if isinstance(source, RunSpec):
        return source, pathlib.Path.cwd()
    raw, base_dir = read_spec_source(source)
    try:
        return RunSpec.model_validate(raw), base_dir
    except ValidationError as exc:
        single = [key for key in ("sae", "targets") if isinstance(raw.get(key), dict)]
        raise SpecError([(_unindex(path, single), message) for path, message in validation_problems(exc)]) from None


def _unindex(path: str, single: list[str]) -> str:
    """``targets[0].x`` -> ``targets.x`` where the spec wrote one ``[targets]`` table, not an array."""
    for key in single:
        if path == f"{key}[0]" or path.startswith(f"{key}[0]."):
            return key + path[len(key) + 3 :]
    return path


@dataclass
class ResolvedComponent:
    """A spec section matched to its registration, with validated params (nothing built yet)."""

    section: str
    spec: ComponentSpec
    registration: Any
    params: BaseModel

    @property
    def label(self) -> str:
        """The name used in result tables."""
        return self.spec.display_name

    def build(self) -> Any:
        """Build the component."""
        return self.registration.build(self.params)


def _path_fields(model: type[BaseModel]) -> set[str]:
    names = set()
    for name, info in model.model_fields.items():
        if _mentions_path(info.annotation):
            names.add(name)
    return names


def _mentions_path(annotation: Any) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, pathlib.PurePath):
        return True
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType) or origin is typing.Annotated:
        return any(_mentions_path(a) for a in typing.get_args(annotation))
    return False


def anchor_paths(model: type[BaseModel], params: dict[str, Any], base_dir: pathlib.Path) -> dict[str, Any]:
    """``params`` with every relative path of a path-typed field of ``model`` taken from ``base_dir``."""
    params = dict(params)
    for name in _path_fields(model):
        value = params.get(name)
        if isinstance(value, (str, pathlib.PurePath)) and not pathlib.Path(value).expanduser().is_absolute():
            params[name] = str(base_dir / pathlib.Path(value))
        elif isinstance(value, (str, pathlib.PurePath)):
            params[name] = str(pathlib.Path(value).expanduser())
    return params


def resolve(spec: RunSpec, host: Any, base_dir: pathlib.Path | None = None) -> dict[str, list[ResolvedComponent]]:
    """Match every component section to a registration and validate its params.

    Relative paths in params declared as paths are taken from ``base_dir``. Every problem is collected
    before raising, so one call reports them all.

    Raises
    ------
    SpecError
        Unknown names (with did-you-mean and plugin load failures) and invalid params, each with its path.
    """
    resolved, problems = resolve_partially(spec, host, base_dir)
    if problems:
        raise SpecError(problems)
    return resolved


def resolve_partially(
    spec: RunSpec, host: Any, base_dir: pathlib.Path | None = None
) -> tuple[dict[str, list[ResolvedComponent]], list[tuple[str, str]]]:
    """Like :func:`resolve`, but return the sections that resolved together with the problems of the rest."""
    base_dir = base_dir or pathlib.Path.cwd()
    sections = {
        "backbone": ("backbone", [spec.backbone], False),
        "sae": ("sae", spec.sae, len(spec.sae) > 1),
        "data": ("dataset", [spec.data], False),
        "attributors": ("attributor", spec.attributors, True),
        "metrics": ("metric", spec.metrics, True),
    }
    problems: list[tuple[str, str]] = []
    resolved: dict[str, list[ResolvedComponent]] = {}
    for section, (kind, entries, indexed) in sections.items():
        resolved[section] = []
        for i, entry in enumerate(entries):
            component, found = resolve_component(f"{section}[{i}]" if indexed else section, kind, entry, host, base_dir)
            problems += found
            if component is not None:
                resolved[section].append(component)
    return resolved, problems


def resolve_component(
    path: str, kind: str, entry: ComponentSpec, host: Any, base_dir: pathlib.Path
) -> tuple[ResolvedComponent | None, list[tuple[str, str]]]:
    """Match one component section (at ``path`` in the spec) to its registration and validate its params."""
    try:
        registration = host.registry(kind).get(entry.name)
    except UnknownComponentError as exc:
        if entry.optional:
            warnings.warn(f"{path}: skipping optional {kind} {entry.name!r}: {exc}", RuntimeWarning, stacklevel=2)
            return None, []
        return None, [(f"{path}.name", str(exc))]
    except CafeError as exc:
        return None, [(f"{path}.name", str(exc))]
    raw = anchor_paths(registration.params, entry.params, base_dir)
    try:
        params = registration.validate(raw)
    except ValidationError as exc:
        return None, validation_problems(exc, path)
    return ResolvedComponent(path, entry, registration, params), []


def build_component(component: ResolvedComponent, problems: list[tuple[str, str]]) -> Any:
    """Build a resolved component; a :class:`CafeError` becomes a problem at its path (and ``None``)."""
    try:
        return component.build()
    except CafeError as exc:
        problems.append((component.section, str(exc)))
        return None
