"""Plugin discovery and loading: entry points of group ``cafe``, one plugin at a time.

A plugin that fails to import, misspells a hook, or raises while registering is recorded with its traceback
and reported with a warning; it never takes the host down. Environment variables:

``CAFE_STRICT_PLUGINS=1``
    Make any such failure fatal (:class:`~cafe_core.errors.PluginLoadError`).
``CAFE_DISABLE_PLUGINS=a,b``
    Do not load the plugins with these entry-point names.

No plugin manager exists until :func:`get_host` is first called.
"""

from __future__ import annotations

import difflib
import os
import traceback
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginLoadError
from .registry import KINDS, Registry

__all__ = ["PluginFailure", "PluginHost", "PluginInfo", "get_host", "reset_host"]

ENTRY_POINT_GROUP = "cafe"
_HOOK_OF_KIND = {
    "backbone": "cafe_register_backbones",
    "sae": "cafe_register_saes",
    "attributor": "cafe_register_attributors",
    "metric": "cafe_register_metrics",
    "dataset": "cafe_register_datasets",
    "executor": "cafe_register_executors",
    "command": "cafe_register_commands",
    "spec_table": "cafe_register_spec_tables",
    "report_section": "cafe_register_report_sections",
}


@dataclass
class PluginFailure:
    """A plugin that could not be loaded or could not register its components."""

    name: str
    stage: str
    error: str
    traceback: str
    distribution: str | None = None

    @property
    def summary(self) -> str:
        """One line: where it failed and why."""
        return f"{self.stage} failed: {self.error}"


@dataclass
class PluginInfo:
    """A loaded plugin and what it registered."""

    name: str
    distribution: str | None = None
    version: str | None = None
    components: list[tuple[str, str]] = field(default_factory=list)


def _env_list(name: str) -> set[str]:
    return {part.strip() for part in os.environ.get(name, "").split(",") if part.strip()}


def _strict_default() -> bool:
    return os.environ.get("CAFE_STRICT_PLUGINS", "").strip().lower() in {"1", "true", "yes", "on"}


class PluginHost:
    """A pluggy manager with the cafe hookspecs, its plugins, and one :class:`Registry` per kind.

    Parameters
    ----------
    entry_points : bool
        Discover installed plugins (entry-point group ``cafe``).
    strict : bool, optional
        Raise on the first plugin failure; defaults to ``CAFE_STRICT_PLUGINS``.
    disabled : iterable of str, optional
        Plugin names not to load; defaults to ``CAFE_DISABLE_PLUGINS``.
    """

    def __init__(self, *, entry_points: bool = True, strict: bool | None = None, disabled=None) -> None:
        self.strict = _strict_default() if strict is None else strict
        self.disabled = set(_env_list("CAFE_DISABLE_PLUGINS") if disabled is None else disabled)
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        self.plugins: dict[str, PluginInfo] = {}
        self._registries: dict[str, Registry] | None = None
        self._add_builtin()
        if entry_points:
            self.load_entry_points()

    def _fail(self, failure: PluginFailure) -> None:
        self.failures.append(failure)
        message = f"cafe plugin {failure.name!r}: {failure.summary}"
        if self.strict:
            raise PluginLoadError(message + "\n" + failure.traceback)
        warnings.warn(message + " (run `cafe plugins` for the traceback)", RuntimeWarning, stacklevel=3)

    def _add_builtin(self) -> None:
        """The core's own components (the default executor), present even on a host without entry points."""
        from . import __version__, builtin

        self.pm.register(builtin, name=builtin.PLUGIN_NAME)
        self.plugins[builtin.PLUGIN_NAME] = PluginInfo(builtin.PLUGIN_NAME, "cafe-core", __version__)

    def load_entry_points(self) -> None:
        """Load every installed plugin of the ``cafe`` entry-point group, one by one."""
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in self.disabled or self.pm.has_plugin(ep.name):
                continue
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            try:
                plugin = ep.load()
            except Exception as exc:
                self._fail(
                    PluginFailure(ep.name, "import", f"{type(exc).__name__}: {exc}", traceback.format_exc(), dist_name)
                )
                continue
            self.add(plugin, ep.name, distribution=dist_name, version=dist.version if dist is not None else None)

    def add(self, plugin: Any, name: str | None = None, *, distribution: str | None = None, version=None) -> None:
        """Register a plugin object (a module or any object with hook functions) by hand.

        This is how tests and notebooks add a plugin without installing a distribution.
        """
        name = name or getattr(plugin, "__name__", None) or repr(plugin)
        if name in self.disabled:
            return
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except Exception as exc:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            self._fail(PluginFailure(name, "hook validation", _hook_hint(exc), traceback.format_exc(), distribution))
            return
        self.plugins[name] = PluginInfo(name, distribution, version)
        self._registries = None

    def registry(self, kind: str) -> Registry:
        """The registry of one component kind (built on first use, after all plugins loaded)."""
        if self._registries is None:
            self._registries = self._collect()
        return self._registries[kind]

    def _collect(self) -> dict[str, Registry]:
        registries = {kind: Registry(kind, failures=lambda: list(self.failures)) for kind in KINDS}
        for info in self.plugins.values():
            info.components.clear()
        for kind, hook_name in _HOOK_OF_KIND.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                self._call_register_hook(impl, kind, registries[kind])
        return registries

    def _call_register_hook(self, impl: Any, kind: str, registry: Registry) -> None:
        plugin_name = impl.plugin_name
        pending: list[tuple[tuple, dict]] = []

        def register(name: str, factory: Any, **options: Any) -> None:
            pending.append(((name, factory), options))

        try:
            impl.function(**{arg: register for arg in impl.argnames})
            for (name, factory), options in pending:
                registry.add(name, factory, plugin=plugin_name, **options)
        except Exception as exc:
            self._fail(
                PluginFailure(
                    plugin_name,
                    f"{_HOOK_OF_KIND[kind]}",
                    f"{type(exc).__name__}: {exc}",
                    traceback.format_exc(),
                    self.plugins.get(plugin_name, PluginInfo(plugin_name)).distribution,
                )
            )
            return
        info = self.plugins.setdefault(plugin_name, PluginInfo(plugin_name))
        info.components.extend((kind, name) for (name, _), _ in pending)

    def describe(self) -> dict[str, Any]:
        """Everything ``cafe plugins`` shows, as plain data."""
        for kind in KINDS:
            self.registry(kind)
        return {
            "plugins": [
                {
                    "name": info.name,
                    "distribution": info.distribution,
                    "version": info.version,
                    "components": [{"kind": k, "name": n} for k, n in info.components],
                }
                for info in sorted(self.plugins.values(), key=lambda i: i.name)
            ],
            "components": {
                kind: [
                    {"name": r.name, "plugin": r.plugin, "aliases": list(r.aliases), "description": r.description}
                    for r in self.registry(kind)
                ]
                for kind in KINDS
            },
            "conflicts": {kind: self.registry(kind).conflicts for kind in KINDS if self.registry(kind).conflicts},
            "failures": [
                {
                    "name": f.name,
                    "distribution": f.distribution,
                    "stage": f.stage,
                    "error": f.error,
                    "traceback": f.traceback,
                }
                for f in self.failures
            ],
            "disabled": sorted(self.disabled),
        }

    def version_of(self, plugin_name: str) -> str | None:
        """Installed version of the distribution that provides a plugin, if known."""
        info = self.plugins.get(plugin_name)
        return info.version if info else None


def _hook_hint(exc: Exception) -> str:
    message = f"{type(exc).__name__}: {exc}"
    known = [name for name in dir(hookspecs) if name.startswith("cafe_")]
    for word in str(exc).replace("'", " ").replace(",", " ").split():
        if word.startswith("cafe_") and word not in known:
            close = difflib.get_close_matches(word, known, n=1)
            if close:
                message += f" (did you mean {close[0]!r}?)"
            break
    return message


_host: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide plugin host, built (and installed plugins loaded) on first call."""
    global _host
    if _host is None:
        _host = PluginHost()
    return _host


def reset_host(host: PluginHost | None = None) -> None:
    """Drop the process-wide host (the next :func:`get_host` rediscovers plugins), or install ``host``."""
    global _host
    _host = host
