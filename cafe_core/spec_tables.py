"""Top-level tables of a run spec that plugins own (``[interlayer]``...), checked with the owning plugin's model.

A plugin declares the tables it reads with the ``cafe_register_spec_tables`` hook; the core accepts them beside
its own sections, validates each with the model its plugin registered, and refuses any other table. A plugin's
table is settings of that plugin's commands, not of the run: :meth:`cafe_core.spec.RunSpec.canonical` leaves it
out, so it is not stored in a run directory, and adding or editing it never stops a run from resuming.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable

from pydantic import BaseModel, ValidationError

from .errors import CafeError, validation_problems

__all__ = ["check_tables", "split_tables"]


def split_tables(raw: dict[str, Any], core: Iterable[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``raw`` as the core's sections (the keys in ``core``) and every other top-level key."""
    core = set(core)
    return ({k: v for k, v in raw.items() if k in core}, {k: v for k, v in raw.items() if k not in core})


def check_tables(tables: dict[str, Any], host: Any, core: Iterable[str]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Validate the plugin tables of a spec with their owners' models.

    Parameters
    ----------
    tables : dict
        Top-level keys of a spec that are not the core's sections.
    host : PluginHost
        The plugins whose ``spec_table`` registrations own tables.
    core : iterable of str
        The core's section names (offered as spellings when a table is unknown).

    Returns
    -------
    validated : dict
        Table name -> what its model returned (a pydantic model instance, for a model).
    problems : list of (path, message)
        A key of a table at ``table.key``; an unknown table at its name, with the tables plugins read.
    """
    registry = host.registry("spec_table")
    validated: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for name, value in tables.items():
        if name not in registry:
            problems.append((name, _unknown(name, registry, core)))
            continue
        try:
            validated[name] = _validate(registry.get(name), value)
        except ValidationError as exc:
            problems += validation_problems(exc, name)
        except (CafeError, ValueError, TypeError) as exc:
            problems.append((name, str(exc)))
    return validated, problems


def _validate(registration: Any, value: Any) -> Any:
    model = registration.load()
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model.model_validate(value)
    return model(value)


def _unknown(name: str, registry: Any, core: Iterable[str]) -> str:
    owned = [f"[{r.name}] (plugin {r.plugin!r})" for r in registry]
    close = difflib.get_close_matches(name, [*core, *registry.names()], n=2, cutoff=0.6)
    message = (f"unknown key: [{name}] is neither a section of the run spec nor a table an installed plugin reads "
               f"(plugins' tables: {', '.join(owned) or 'none'}).")
    if close:
        message += " Did you mean " + " or ".join(repr(c) for c in close) + "?"
    message += (" Remove it, fix its spelling, or install the plugin that reads it (`cafe plugins` lists the "
                "installed ones and those that failed to load).")
    return message
