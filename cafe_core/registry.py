"""Name -> component resolution for one kind of component (backbones, SAEs, attributors, metrics, datasets, ...).

Names used here: a component's *factory* is what builds it (a class or function, or a lazy ``"module:attr"``
reference to one); its *params model* is the pydantic class that declares and validates its params; its
*params* are the validated values the factory is called with.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict

from .errors import ComponentLoadError, DuplicateComponentError, UnknownComponentError

__all__ = ["KINDS", "Registration", "Registry"]

KINDS = ("backbone", "sae", "attributor", "metric", "dataset", "executor", "command", "spec_table", "report_section")


class _NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _forbid_extra(params: type[BaseModel] | None) -> type[BaseModel]:
    if params is None:
        return _NoParams
    if not (isinstance(params, type) and issubclass(params, BaseModel)):
        raise TypeError(f"params must be a pydantic BaseModel subclass or None, got {params!r}")
    if params.model_config.get("extra") == "forbid":
        return params
    return type(params.__name__, (params,), {"model_config": ConfigDict(**{**params.model_config, "extra": "forbid"})})


@dataclass
class Registration:
    """One registered component.

    Attributes
    ----------
    kind, name : str
        What it is and the name specs use.
    factory : callable or str
        What builds the component, or a lazy ``"module:attr"`` reference to it.
    params_model : type[pydantic.BaseModel]
        The params model (unknown keys forbidden).
    plugin : str
        Name of the plugin that registered it.
    """

    kind: str
    name: str
    factory: Any
    params_model: type[BaseModel]
    plugin: str
    aliases: tuple[str, ...] = ()
    description: str = ""
    _loaded: Callable[..., Any] | None = field(default=None, repr=False)

    def load(self) -> Callable[..., Any]:
        """The factory itself, importing its module on first use."""
        if self._loaded is None:
            self._loaded = _resolve(self.factory, f"{self.kind} {self.name!r} of plugin {self.plugin!r}")
        return self._loaded

    def validate(self, raw: dict[str, Any]) -> BaseModel:
        """Validate raw params (raises :class:`pydantic.ValidationError`)."""
        return self.params_model.model_validate(raw)

    def build(self, params: BaseModel | dict[str, Any] | None = None) -> Any:
        """Build the component from (raw or validated) params."""
        if not isinstance(params, BaseModel):
            params = self.validate(params or {})
        factory = self.load()
        kwargs = {name: getattr(params, name) for name in type(params).model_fields}
        try:
            return factory(**kwargs)
        except Exception as exc:
            if _is_cafe_error(exc):
                raise
            raise ComponentLoadError(
                f"could not build {self.kind} {self.name!r} (plugin {self.plugin!r}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc


def _is_cafe_error(exc: BaseException) -> bool:
    from .errors import CafeError

    return isinstance(exc, CafeError)


def _resolve(factory: Any, what: str) -> Callable[..., Any]:
    if not isinstance(factory, str):
        return factory
    module_name, _, attr_path = factory.partition(":")
    if not attr_path:
        raise ComponentLoadError(f"{what}: lazy factory {factory!r} must look like 'module:attr'")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr_path.split("."):
            obj = getattr(obj, part)
    except Exception as exc:
        raise ComponentLoadError(
            f"{what}: cannot import {factory!r} ({type(exc).__name__}: {exc}); "
            "reinstall the plugin or check that its dependencies are installed"
        ) from exc
    return obj


class Registry:
    """The components of one kind, by name and alias.

    Parameters
    ----------
    kind : str
        One of :data:`KINDS`.
    failures : callable, optional
        Returns the plugin load failures to mention when a name is unknown.
    """

    def __init__(self, kind: str, failures: Callable[[], list[Any]] | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown component kind {kind!r}; expected one of {KINDS}")
        self.kind = kind
        self._by_name: dict[str, Registration] = {}
        self._aliases: dict[str, str] = {}
        self._conflicts: dict[str, list[str]] = {}
        self._failures = failures or (lambda: [])

    def add(
        self,
        name: str,
        factory: Any,
        *,
        plugin: str,
        params: type[BaseModel] | None = None,
        aliases: tuple[str, ...] | list[str] = (),
        description: str = "",
    ) -> Registration:
        """Register a component; a name or alias already taken by another plugin becomes a conflict."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} name must be a non-empty string, got {name!r}")
        registration = Registration(
            kind=self.kind,
            name=name,
            factory=factory,
            params_model=_forbid_extra(params),
            plugin=plugin,
            aliases=tuple(aliases),
            description=description,
        )
        for key in (name, *registration.aliases):
            owner = self._owner(key)
            if owner is not None:
                self._conflicts.setdefault(key, [owner.plugin]).append(plugin)
        self._by_name.setdefault(name, registration)
        for alias in registration.aliases:
            self._aliases.setdefault(alias, name)
        return registration

    def _owner(self, key: str) -> Registration | None:
        if key in self._by_name:
            return self._by_name[key]
        if key in self._aliases:
            return self._by_name[self._aliases[key]]
        return None

    @property
    def conflicts(self) -> dict[str, list[str]]:
        """Names registered by more than one plugin, with those plugins."""
        return {k: list(v) for k, v in self._conflicts.items()}

    def names(self) -> list[str]:
        """Registered names (aliases excluded), sorted."""
        return sorted(self._by_name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._owner(name) is not None

    def __iter__(self):
        return iter(self._by_name[n] for n in self.names())

    def get(self, name: str) -> Registration:
        """The registration of ``name`` (or an alias).

        Raises
        ------
        UnknownComponentError
            With close matches, the available names and any plugin load failure.
        DuplicateComponentError
            When two plugins registered the name.
        """
        if name in self._conflicts:
            plugins = " and ".join(repr(p) for p in self._conflicts[name])
            raise DuplicateComponentError(
                f"{self.kind} {name!r} is registered by both plugins {plugins}; uninstall one of them or "
                "block it with CAFE_DISABLE_PLUGINS"
            )
        registration = self._owner(name)
        if registration is not None:
            return registration
        raise UnknownComponentError(self.unknown_message(name))

    def unknown_message(self, name: str) -> str:
        """The explanation given for an unknown ``name``."""
        known = sorted([*self._by_name, *self._aliases])
        message = f"unknown {self.kind} {name!r}."
        close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.6)
        if close:
            message += " Did you mean " + " or ".join(repr(c) for c in close) + "?"
        message += f" Available: {', '.join(self.names()) or '(none installed)'}."
        failures = self._failures()
        if failures:
            message += " Plugins that failed to load and might provide it: " + "; ".join(
                f"{f.name} ({f.summary})" for f in failures
            )
            message += ". Run `cafe plugins` for their tracebacks."
        return message
