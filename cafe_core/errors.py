"""Exceptions with messages that name the cause and the fix."""

from __future__ import annotations

from typing import Any

__all__ = [
    "CafeError",
    "ComponentLoadError",
    "DuplicateComponentError",
    "IncompatibleComponentError",
    "PluginLoadError",
    "SpecError",
    "UnknownComponentError",
    "validation_problems",
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
        self.what = what
        lines = [f"{len(self.problems)} problem(s) in the {what}:"]
        lines += [f"  {path or '<spec>'}: {message}" for path, message in self.problems]
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple:
        # pickled whole, so that a worker in another process (an executor's) can raise it to the driver
        return type(self), (self.problems, self.what)


class IncompatibleComponentError(CafeError):
    """A built component cannot work with the run's backbone (or SAE); the message names the module and the fix."""


def _error_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def validation_problems(exc: Any, prefix: str = "") -> list[tuple[str, str]]:
    """``(path, message)`` pairs of a :class:`pydantic.ValidationError`, paths prefixed with ``prefix`` (a spec section)."""
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
