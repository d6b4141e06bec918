"""The ``[interlayer]`` table of a run spec, and the spec's model, SAEs and methods it selects.

The plugin registers ``[interlayer]`` as a table of the run spec (hook ``cafe_register_spec_tables``), so
the core reads it with the rest of the spec and checks it with :class:`~cafe_interlayer.table.InterlayerSection`
(``cafe validate`` reports its problems at their paths, ``interlayer.points``...). ``cafe run`` accepts and
ignores it: the table is not part of a run's identity. The interlayer commands build everything else with
the core's resolver, as ``cafe validate`` does. Command-line options override the table's keys.

```toml
[interlayer]
target = "layer3"            # the SAE whose latents are explained: a label or a layer (default: the top one)
source = ["layer2", 0]       # the earlier SAEs, by label or layer (default: every patch-token SAE below)
attributors = ["integrated_gradients", "cp_lrp", { name = "integrated_gradients", label = "ig8", n_steps = 8 }]
error = "keep"               # insertion blank: the reconstruction of no latents plus ("keep") or without ("drop") the error
unit = "pair"                # insert (latent, token) pairs, or whole latents ("latent")
points = 21                  # points of each insertion/deletion curve
share = 0.8                  # concept graph: each layer keeps the fewest latents holding this share of relevance
max_nodes = 12               # ... and at most this many
```
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from cafe_core.errors import SpecError, validation_problems

from .errors import InterlayerError
from .graph import Level
from .methods import COUNTERPARTS, METHODS, build_method
from .splice import Source, splice_problem
from .table import InterlayerSection, MethodEntry, SaeRef

__all__ = ["InterlayerPlan", "InterlayerSection", "MethodEntry", "prepare_interlayer", "read_interlayer_spec"]

TABLE = "interlayer"
"""The name of the table in a run spec."""


def read_interlayer_spec(source: Any, host: Any = None) -> tuple[Any, pathlib.Path, InterlayerSection]:
    """Read a spec (TOML path or dict) with the core's reader: the run spec, its base folder and the table.

    Parameters
    ----------
    source : path or dict
        The spec.
    host : PluginHost, optional
        The plugins (every installed one by default); the interlayer plugin registers the table.

    Returns
    -------
    spec : cafe_core.spec.RunSpec
    base_dir : pathlib.Path
    section : InterlayerSection
        The ``[interlayer]`` table, or its defaults when the spec has none.

    Raises
    ------
    cafe_core.errors.SpecError
        Listing every problem of the spec, those of the table at their paths (``interlayer.points``...).
    """
    from cafe_core.spec import load_spec

    spec, base_dir = load_spec(source, host)
    return spec, base_dir, spec.tables.get(TABLE, InterlayerSection())


@dataclass
class InterlayerPlan:
    """The built run plan and what the interlayer commands take from it."""

    plan: Any
    section: InterlayerSection
    target: Level
    sources: list[Level]
    methods: dict[str, Any] = field(default_factory=dict)

    def source(self, level: Level) -> Source:
        """The :class:`Source` of one of :attr:`sources`."""
        return Source(self.plan.backbone, level.sae, level.layer, level.label)

    @property
    def levels(self) -> list[Level]:
        """The target, then the sources from the top layer down (the concept graph's levels)."""
        return [self.target, *sorted(self.sources, key=lambda lv: -lv.layer)]


def _levels(plan: Any) -> list[Level]:
    return [Level(sae, sae.layer, label) for sae, label in zip(plan.saes, plan.sae_labels)]


def _find(levels: list[Level], ref: SaeRef, what: str) -> Level:
    if isinstance(ref, str):
        found = [lv for lv in levels if lv.label == ref]
    else:
        found = [lv for lv in levels if lv.layer == ref]
        if len(found) > 1:  # a layer with a patch-token and a class-token SAE: the patch one, unless named
            patch = [lv for lv in found if getattr(lv.sae, "tokens", "patch") != "cls"]
            found = patch if len(patch) == 1 else found
    names = ", ".join(f"{lv.label} (layer {lv.layer})" for lv in levels)
    if not found:
        raise InterlayerError(f"{what} {ref!r} is not an SAE of the spec; its SAEs: {names}")
    if len(found) > 1:
        raise InterlayerError(f"{what} {ref!r} matches several SAEs ({names}); name one by its label")
    return found[0]


def choose_levels(plan: Any, section: InterlayerSection) -> tuple[Level, list[Level]]:
    """The target SAE and the source SAEs the section names (or their defaults).

    Raises
    ------
    InterlayerError
        For an unknown or ambiguous SAE, a source not below the target, two sources at one layer, or a source
        the SAE path cannot be spliced into.
    """
    levels = _levels(plan)
    if section.target is not None:
        target = _find(levels, section.target, "target")
    else:
        top = max(lv.layer for lv in levels)
        at_top = [lv for lv in levels if lv.layer == top]
        patch = [lv for lv in at_top if getattr(lv.sae, "tokens", "patch") != "cls"]
        target = (patch or at_top)[0]
    if section.source is None:
        sources = [lv for lv in levels if lv.layer < target.layer and getattr(lv.sae, "tokens", "patch") != "cls"]
    else:
        refs = section.source if isinstance(section.source, list) else [section.source]
        sources = [_find(levels, ref, "source") for ref in refs]
    if not sources:
        raise InterlayerError(f"no source SAE below the target {target.label} (layer {target.layer}); add an SAE "
                              "at an earlier layer to the spec, or name one with [interlayer] source")
    for level in sources:
        if level.layer >= target.layer:
            raise InterlayerError(f"source {level.label} (layer {level.layer}) is not before the target "
                                  f"{target.label} (layer {target.layer})")
        problem = splice_problem(plan.backbone, level.sae, level.layer)
        if problem:
            raise InterlayerError(f"source {level.label}: {problem}")
    layers = [lv.layer for lv in sources]
    if len(set(layers)) != len(layers):
        raise InterlayerError(f"two sources at one layer ({sorted(layers)}); keep one SAE per layer")
    return target, sorted(sources, key=lambda lv: -lv.layer)


def choose_methods(plan: Any, section: InterlayerSection) -> dict[str, Any]:
    """The interlayer attributors by label: the section's, or the counterparts of the spec's attributors.

    Raises
    ------
    InterlayerError
        When the spec has none with a counterpart and the section names none.
    """
    if section.attributors is not None:
        return {e.label or e.name: build_method(e.name, e.params) for e in section.attributors}
    chosen: dict[str, Any] = {}
    for entry in plan.resolved.get("attributors", []):
        registered = entry.registration.name
        if registered not in COUNTERPARTS:
            continue
        name, carried = COUNTERPARTS[registered]
        params = {k: v for k, v in entry.spec.params.items() if k in carried}
        label = name if name not in chosen else entry.spec.display_name
        chosen[label] = build_method(name, params)
    if not chosen:
        raise InterlayerError("the spec has no attributor with an interlayer counterpart; name some in "
                              f"[interlayer] attributors (available: {', '.join(METHODS)})")
    return chosen


def prepare_interlayer(spec: Any, base_dir: pathlib.Path | None = None, device: str | None = None,
                       overrides: dict[str, Any] | None = None, host: Any = None) -> InterlayerPlan:
    """Read a spec with its ``[interlayer]`` table, build it with the core's resolver, choose SAEs and methods.

    Parameters
    ----------
    spec : path or dict
        The spec.
    base_dir : path, optional
        Folder of the spec's relative paths (default: the spec file's).
    device : str, optional
        Overrides ``run.device``.
    overrides : dict, optional
        Keys of the ``[interlayer]`` table given on the command line (``None`` values are ignored).
    host : PluginHost, optional
        The plugins (all installed ones by default).
    """
    from cafe_report.rebuild import prepare_spec

    loaded, spec_dir, section = read_interlayer_spec(spec, host)
    updates = {k: v for k, v in (overrides or {}).items() if v is not None}
    if updates:
        try:
            section = InterlayerSection.model_validate({**section.model_dump(exclude_unset=True), **updates})
        except ValidationError as exc:
            raise SpecError(validation_problems(exc, TABLE)) from None
    plan = prepare_spec(loaded, base_dir or spec_dir, device, host=host)
    target, sources = choose_levels(plan, section)
    methods = choose_methods(plan, section)
    problems = [f"{label}: {p}" for label, method in methods.items()
                for level in sources for p in method.check_compatible(Source(plan.backbone, level.sae, level.layer))]
    if problems:
        raise InterlayerError("; ".join(dict.fromkeys(problems)))
    return InterlayerPlan(plan, section, target, sources, methods)
