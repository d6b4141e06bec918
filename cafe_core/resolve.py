"""From spec sections to components: match each section to its registration, validate its params, build it.

One resolver for every spec that names components: the run plan (:mod:`cafe_core.plan`), ``cafe validate`` and
the specs of plugin commands (SAE training) all go through :func:`resolve_component` and
:func:`build_component`.
"""

from __future__ import annotations

import pathlib
import types
import typing
import warnings
from dataclasses import dataclass
from typing import Any, Union

from pydantic import BaseModel, ValidationError

from .errors import CafeError, SpecError, UnknownComponentError, validation_problems
from .spec import ComponentSpec, RunSpec

__all__ = [
    "ResolvedComponent",
    "anchor_paths",
    "build_component",
    "is_uri",
    "resolve",
    "resolve_component",
    "resolve_device",
    "resolve_partially",
]


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


def is_uri(value: Any) -> bool:
    """Whether ``value`` is a string with a URI scheme (``hf://owner/repo/...``), which is no local path."""
    scheme, separator, _ = str(value).partition("://") if isinstance(value, str) else ("", "", "")
    return bool(separator) and scheme.isidentifier()


def anchor_paths(model: type[BaseModel], params: dict[str, Any], base_dir: pathlib.Path) -> dict[str, Any]:
    """``params`` with every relative path of a path-typed field of ``model`` taken from ``base_dir``.

    A URI (``hf://owner/repo/file``) in such a field is left as it is, for the component to resolve.
    """
    params = dict(params)
    for name in _path_fields(model):
        value = params.get(name)
        if is_uri(value):
            continue
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
    # section -> (kind, entries, where the spec holds them, whether they are indexed)
    sections = {
        "backbone": ("backbone", [spec.backbone], "backbone", False),
        "sae": ("sae", spec.sae, "sae", len(spec.sae) > 1),
        "dataset": ("dataset", [spec.dataset], "dataset", False),
        "attributors": ("attributor", spec.attributors, "attributors", True),
        "metrics": ("metric", spec.metrics, "metrics", True),
        "executor": ("executor", [spec.run.executor], "run.executor", False),
    }
    problems: list[tuple[str, str]] = []
    resolved: dict[str, list[ResolvedComponent]] = {}
    for section, (kind, entries, path, indexed) in sections.items():
        resolved[section] = []
        for i, entry in enumerate(entries):
            component, found = resolve_component(f"{path}[{i}]" if indexed else path, kind, entry, host, base_dir)
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
    raw = anchor_paths(registration.params_model, entry.params, base_dir)
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
