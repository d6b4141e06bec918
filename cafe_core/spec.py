"""The run spec: what to explain, with which components, and how to run it.

This module defines the spec's structure and reads it; :mod:`cafe_core.resolve` matches its sections to
registered components and builds them. A spec is a TOML file or a dict with one section per component kind. A component section holds ``name``
(the registered component), an optional ``label`` (the name in result tables; needed when one method appears
twice with different params) and the component's own params, validated against the params model the plugin
declared. See the README for a walkthrough.
"""

from __future__ import annotations

import json
import pathlib
import sys
import warnings
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from .errors import SpecError, validation_problems
from .spec_tables import check_tables, split_tables

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "DEFAULT_RELATIVE_FLOOR",
    "ComponentSpec",
    "RunSection",
    "RunSpec",
    "TargetRule",
    "check_device_name",
    "load_spec",
    "read_spec_source",
    "renamed_key",
    "stored_spec_data",
]

_RESERVED = ("name", "label")

DEFAULT_RELATIVE_FLOOR = 0.1
"""The default ``min_relative_activation`` of a target rule: a tenth of the latent's largest value in the run."""

# Settings added to a section after runs were stored without them, with the value those runs were made with.
_ADDED_SETTINGS = {"targets": {"min_relative_activation": 0.0}}


def stored_spec_data(data: dict[str, Any]) -> dict[str, Any]:
    """A spec as a run store recorded it, with every setting added since given the value the run used.

    A run stored before a setting existed ran without it (no relative floor, say), not with today's default:
    reading it with today's defaults would make a resumed run mix two rules.
    """
    data = dict(data)
    for section, added in _ADDED_SETTINGS.items():
        value = data.get(section)
        if isinstance(value, dict):
            data[section] = {**added, **value}
        elif isinstance(value, list):
            data[section] = [{**added, **rule} if isinstance(rule, dict) else rule for rule in value]
    return data


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


def renamed_key(data: Any, old: str, new: str, where: str) -> Any:
    """``data`` with the deprecated key ``old`` moved to ``new`` (a warning says so; both at once is an error)."""
    if not isinstance(data, dict) or old not in data:
        return data
    if new in data:
        raise ValueError(f"`{old}` is the old name of `{new}`; give only `{new}`")
    warnings.warn(
        f"{where}: `{old}` is deprecated, write `{new}` instead (same meaning)", DeprecationWarning, stacklevel=2
    )
    return {(new if key == old else key): value for key, value in data.items()}


class TargetRule(BaseModel):
    """Which latents to explain on each image, and at which token: one ``[[targets]]`` table of a spec.

    Attributes
    ----------
    latents : list of int, optional
        Explicit latent indices.
    select : {"top", "random"}, optional
        Instead of ``latents``: per image, the ``count`` most active latents, or ``count`` latents drawn at
        random (seeded) among those active at the chosen position.
    count : int, optional
        How many latents ``select`` picks per image.
    token : "argmax", "cls", a prefix-token name, or an int
        Where each latent is read. ``"argmax"``: the patch token where the latent is largest on that image.
        ``"cls"`` (or ``"reg0"``...): that prefix token. An int: that position in the token sequence. (Written
        ``position`` before; that key is still read, with a deprecation warning.)
    min_activation : float
        A target whose latent is at most this on its token is recorded as inactive and not explained.
    min_relative_activation : float
        The floor relative to the latent's typical activation, a fraction in ``[0, 1]`` (default 0.1): a
        target whose latent is active but below this fraction of the latent's *scale* is recorded as
        ``below_floor`` and not explained. A latent's scale is its largest value, over every image of the run,
        at the token this rule reads (for ``token = "argmax"``: at any patch token; for a named or numbered
        token: at that token), computed once when the run starts and kept in the run store, so that a resumed
        run (with images added, say) judges every image by the same floor. The floor changes which targets
        are explained, never which latents a rule picks: ``select = "random"`` draws among the active
        latents as without it. ``0`` turns it off.
    """

    model_config = ConfigDict(extra="forbid")

    latents: list[int] | None = None
    select: Literal["top", "random"] | None = None
    count: int | None = Field(default=None, ge=1)
    token: Union[int, str] = "argmax"
    min_activation: float = Field(default=0.0, ge=0.0)
    min_relative_activation: float = Field(default=DEFAULT_RELATIVE_FLOOR, ge=0.0, le=1.0)

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, data: Any) -> Any:
        return renamed_key(data, "position", "token", "targets")

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
    def _one_rule(self) -> "TargetRule":
        if (self.latents is None) == (self.select is None):
            raise ValueError("give exactly one of `latents = [...]` or `select = \"top\" | \"random\"` with `count`")
        if self.select is not None and self.count is None:
            raise ValueError(f"select = {self.select!r} needs `count` (latents per image)")
        if isinstance(self.token, int) and self.token < 0:
            raise ValueError("a token position must be >= 0")
        return self


class RunSection(BaseModel):
    """How to execute: batching, device, dtype, seed, how many images, and the executor.

    ``executor`` names a registered executor: ``executor = "ray"``, or a ``[run.executor]`` table with
    ``name`` and the executor's params, as any component section (``"inprocess"``, the default, computes
    every unit in this process).
    """

    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(default=16, ge=1)
    device: str = "auto"
    dtype: Literal["float32", "float64"] = "float32"
    seed: int = 0
    limit: int | None = Field(default=None, ge=1)
    paranoid: bool = False
    """Check that the model is unchanged after every component call, not only after each one's first."""
    autocast: Literal["bfloat16", "float16"] | None = None
    """Run the attributors' and metrics' passes under :func:`torch.autocast` with this dtype (off by default).

    Target selection stays in ``dtype``, so a run with and without autocast explains the same targets;
    heatmaps, curves and scores are stored in ``dtype``. Needs ``dtype = "float32"``.
    """
    executor: ComponentSpec = Field(default_factory=lambda: ComponentSpec(name="inprocess"))

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return check_device_name(value)

    @model_validator(mode="after")
    def _autocast_needs_float32(self) -> "RunSection":
        if self.autocast is not None and self.dtype != "float32":
            raise ValueError(
                f"autocast = {self.autocast!r} lowers float32 passes only; with dtype = {self.dtype!r} it would "
                "do nothing: use dtype = \"float32\" or leave autocast out"
            )
        return self

    @field_validator("executor", mode="before")
    @classmethod
    def _executor_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class RunSpec(BaseModel):
    """A whole run spec (see the README for the TOML form).

    The top-level tables plugins own (``[interlayer]``...) are not fields: :func:`load_spec` validates them
    with their plugins' models and keeps them in :attr:`tables`, outside :meth:`canonical`.
    """

    model_config = ConfigDict(extra="forbid")

    backbone: ComponentSpec
    sae: list[ComponentSpec] = Field(min_length=1)
    dataset: ComponentSpec
    targets: list[TargetRule] = Field(min_length=1)
    attributors: list[ComponentSpec] = Field(min_length=1)
    metrics: list[ComponentSpec] = Field(default_factory=list)
    run: RunSection = Field(default_factory=RunSection)
    _tables: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def tables(self) -> dict[str, Any]:
        """The plugin tables of the spec, by name, as their plugins' models validated them."""
        return self._tables

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, data: Any) -> Any:
        return renamed_key(data, "data", "dataset", "spec")

    @field_validator("sae", "targets", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _unique_labels(self) -> "RunSpec":
        for section in ("sae", "attributors", "metrics"):
            labels = [c.display_name for c in getattr(self, section)]
            repeated = sorted({x for x in labels if labels.count(x) > 1})
            if repeated:
                raise ValueError(
                    f"{section} {repeated} appear more than once; give each a distinct `label`"
                )
        return self

    def canonical(self) -> dict[str, Any]:
        """Plain data form (paths as strings), used to store and compare specs: the run's identity.

        Plugin tables (:attr:`tables`) are left out: they set up other commands, not the run.
        """
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


def read_spec_source(source: dict[str, Any] | str | pathlib.Path) -> tuple[dict[str, Any], pathlib.Path]:
    """Raw spec data and the directory relative paths start from (a TOML file's folder, or the cwd).

    Raises
    ------
    SpecError
        For a missing, unreadable or non-UTF-8 file, a directory, invalid TOML, or a source of another type.
    """
    if isinstance(source, dict):
        return source, pathlib.Path.cwd()
    if isinstance(source, (str, pathlib.Path)):
        path = pathlib.Path(source)
        try:
            # utf-8-sig: a UTF-8 file that starts with a byte-order mark (as some Windows editors save) is read too
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise SpecError([("", f"spec file {str(path)!r} does not exist")]) from None
        except IsADirectoryError:
            raise SpecError([("", f"{path} is a directory; pass the path of a TOML spec file")]) from None
        except UnicodeDecodeError as exc:
            raise SpecError(
                [("", f"{path} is not UTF-8 text (byte {exc.start} cannot be decoded); TOML files are UTF-8: "
                  "save it as UTF-8 in your editor")]
            ) from None
        except OSError as exc:
            raise SpecError([("", f"{path} cannot be read ({exc.strerror}); check its permissions")]) from None
        try:
            return tomllib.loads(text), path.resolve().parent
        except tomllib.TOMLDecodeError as exc:
            raise SpecError([("", f"{path} is not valid TOML: {exc}")]) from None
    raise SpecError(
        [("", f"a spec is a dict, a RunSpec or the path of a TOML file, not {type(source).__name__} "
          f"({source!r}); pass one of these")]
    )


def load_spec(
    source: RunSpec | dict[str, Any] | str | pathlib.Path, host: Any = None
) -> tuple[RunSpec, pathlib.Path]:
    """Parse a spec from a TOML path, a dict or a :class:`RunSpec`.

    Parameters
    ----------
    source : RunSpec, dict or path
        The spec.
    host : PluginHost, optional
        The plugins whose registered tables a spec may hold besides the core's sections (default: every
        installed plugin, loaded only when the spec has such a table).

    Returns
    -------
    spec : RunSpec
        With the plugin tables validated in :attr:`RunSpec.tables`.
    base_dir : pathlib.Path
        Directory that relative paths in component params are taken from (the spec file's directory, or the
        working directory).

    Raises
    ------
    SpecError
        Listing every structural problem with its path in the spec, those of plugin tables and unknown tables
        included.
    """
    if isinstance(source, RunSpec):
        return source, pathlib.Path.cwd()
    raw, base_dir = read_spec_source(source)
    core_names = [*RunSpec.model_fields, "data"]  # "data": the old name of "dataset"
    core, tables = split_tables(raw, core_names)
    problems: list[tuple[str, str]] = []
    validated: dict[str, Any] = {}
    if tables:
        if host is None:
            from .plugins import get_host

            host = get_host()
        validated, problems = check_tables(tables, host, RunSpec.model_fields)
    try:
        spec = RunSpec.model_validate(core)
    except ValidationError as exc:
        single = [key for key in ("sae", "targets") if isinstance(raw.get(key), dict)]
        problems = [(_unindex(path, single), message) for path, message in validation_problems(exc)] + problems
    if problems:
        raise SpecError(problems)
    spec._tables = validated
    return spec, base_dir


def _unindex(path: str, single: list[str]) -> str:
    """``targets[0].x`` -> ``targets.x`` where the spec wrote one ``[targets]`` table, not an array."""
    for key in single:
        if path == f"{key}[0]" or path.startswith(f"{key}[0]."):
            return key + path[len(key) + 3 :]
    return path
