"""Exceptions with messages that name the cause and the fix."""

from __future__ import annotations

__all__ = [
    "CafeError",
    "ComponentLoadError",
    "DuplicateComponentError",
    "PluginLoadError",
    "SpecError",
    "UnknownComponentError",
]


class CafeError(Exception):
    """Base class of every error cafe raises on purpose; the CLI prints its message without a traceback."""


class PluginLoadError(CafeError):
    """A plugin failed to import or register (raised only with ``CAFE_STRICT_PLUGINS=1``)."""


class UnknownComponentError(CafeError, LookupError):
    """A spec names a component no installed plugin registers."""


class DuplicateComponentError(CafeError):
    """Two plugins register the same component name."""


class ComponentLoadError(CafeError):
    """A registered component could not be imported or built."""


class SpecError(CafeError, ValueError):
    """A run spec is invalid; ``problems`` lists every ``(path, message)`` found, not only the first."""

    def __init__(self, problems: list[tuple[str, str]], what: str = "run spec") -> None:
        self.problems = list(problems)
        lines = [f"{len(self.problems)} problem(s) in the {what}:"]
        lines += [f"  {path or '<spec>'}: {message}" for path, message in self.problems]
        super().__init__("\n".join(lines))
