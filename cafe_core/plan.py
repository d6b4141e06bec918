"""From a validated spec to built components, with the checks that need the components themselves."""

from __future__ import annotations

import pathlib
import platform
from dataclasses import dataclass, field
from typing import Any

import torch

from . import __version__
from .errors import CafeError, SpecError
from .protocols import DEFAULT_SITE, RunContext, layer_width
from .selection import rule_position
from .resolve import ResolvedComponent, build_component, resolve_device, resolve_partially
from .spec import RunSpec

__all__ = ["RunPlan", "build_plan", "prepare", "make_context"]


def make_context(spec: RunSpec) -> RunContext:
    """The :class:`RunContext` of a spec (``device = "auto"`` picks CUDA when available)."""
    device, problems = resolve_device(spec.run.device)
    autocast = None if spec.run.autocast is None else getattr(torch, spec.run.autocast)
    if device is not None and autocast is not None:
        problems += _autocast_problems(device, autocast)
    if problems:
        raise SpecError(problems)
    return RunContext(
        batch_size=spec.run.batch_size,
        device=device,
        dtype=getattr(torch, spec.run.dtype),
        seed=spec.run.seed,
        autocast=autocast,
    )


def _autocast_problems(device: torch.device, dtype: torch.dtype) -> list[tuple[str, str]]:
    """Why ``device`` cannot autocast to ``dtype`` (empty when it can)."""
    name = str(dtype).removeprefix("torch.")
    if not torch.amp.is_autocast_available(device.type):
        return [("run.autocast", f"torch has no autocast for {device.type!r} devices; leave autocast out")]
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return [("run.autocast", f"{torch.cuda.get_device_name(device)} does not support bfloat16; "
                                 "use autocast = \"float16\" or leave it out")]
    return []


@dataclass
class RunPlan:
    """Everything a run needs, built and checked."""

    spec: RunSpec
    context: RunContext
    resolved: dict[str, list[ResolvedComponent]]
    backbone: Any
    saes: list[Any]
    dataset: Any
    sae_labels: list[str] = field(default_factory=list)
    """The label of each SAE (its section's ``label``, else its ``name``), as in every stored key."""
    attributors: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    rule_positions: list[list[int | None]] = field(default_factory=list)
    """Per SAE, per selection rule: the rule's token index (``None`` for ``"argmax"``)."""
    floors: list[list[Any]] = field(default_factory=list)
    """Per SAE, per selection rule: each latent's floor (``min_relative_activation`` times its scale over the
    run's images), a tensor, or ``None`` for a rule without one; empty until the runner has set them."""

    def versions(self, host: Any) -> dict[str, Any]:
        """Versions of cafe, torch, Python and every plugin that provided a component of this run."""
        plugins = {}
        for section, entries in self.resolved.items():
            if section == "executor":  # an execution setting: a run may resume under another executor
                continue
            for entry in entries:
                plugin = entry.registration.plugin
                info = host.plugins.get(plugin)
                plugins[plugin] = {
                    "distribution": info.distribution if info else None,
                    "version": info.version if info else None,
                }
        return {
            "cafe-core": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "plugins": plugins,
        }

    def higher_is_better(self) -> dict[str, bool | None]:
        """Direction of each metric, by label (``None`` for a descriptive metric with no better direction)."""
        return {label: getattr(metric, "higher_is_better", None) for label, metric in self.metrics.items()}


def _check_saes(backbone: Any, saes: list[Any], spec: RunSpec) -> list[tuple[str, str]]:
    problems = []
    for i, sae in enumerate(saes):
        path = f"sae[{i}]" if len(saes) > 1 else "sae"
        layer = getattr(sae, "layer", None)
        if layer is None:
            problems.append((f"{path}.layer", "the SAE does not record its layer; set `layer = L` in its section"))
        elif not 0 <= layer < backbone.depth:
            problems.append(
                (f"{path}.layer", f"layer {layer} is past the backbone's {backbone.depth} blocks "
                 f"(valid: 0..{backbone.depth - 1}, the output of that block)")
            )
        site = getattr(sae, "site", DEFAULT_SITE)
        sites = tuple(getattr(backbone, "sites", (DEFAULT_SITE,)))
        if site not in sites:
            problems.append(
                (f"{path}.site", f"the SAE was trained on the {site!r} hidden states of its layer, but this backbone "
                 f"provides {', '.join(map(repr, sites))} only; use an SAE trained on the output of a block "
                 "(the residual stream after it)")
            )
        width = layer_width(backbone, layer) if layer is not None and 0 <= layer < backbone.depth else backbone.width
        if sae.d_in != width:
            problems.append(
                (path, f"the SAE reads {sae.d_in}-dim hidden states but the backbone's tokens are {width}-dim; "
                 "it was trained on another model or layer")
            )
        for j, rule in enumerate(spec.targets):
            bad = [n for n in rule.latents or () if n >= sae.d_sae]
            if bad:
                where = f"targets[{j}].latents" if len(spec.targets) > 1 else "targets.latents"
                problems.append((where, f"latents {bad} do not exist in an SAE of {sae.d_sae} latents"))
    return problems


def prepare(spec: RunSpec, host: Any, base_dir: pathlib.Path | None = None) -> RunPlan:
    """Resolve, validate and build every component of ``spec``.

    Raises
    ------
    SpecError
        Every problem found, with its path in the spec: unknown names, bad params, a layer past the
        backbone's depth, an SAE of the wrong width or site, a position the backbone does not have, and what
        each component's ``check_compatible(backbone, saes)`` reports.
    """
    resolved, problems = resolve_partially(spec, host, base_dir)
    try:
        context = make_context(spec)
    except SpecError as exc:
        problems += exc.problems
        context = RunContext()

    def build(entry: ResolvedComponent) -> Any:
        return build_component(entry, problems)

    backbone = build(resolved["backbone"][0]) if resolved["backbone"] else None
    built = {
        section: [(entry.section, entry.label, build(entry)) for entry in resolved[section]]
        for section in ("sae", "attributors", "metrics")
    }
    dataset = build(resolved["dataset"][0]) if resolved["dataset"] else None
    attributors = {label: component for _, label, component in built["attributors"]}
    metrics = {label: component for _, label, component in built["metrics"]}
    saes = [sae for _, _, sae in built["sae"] if sae is not None]
    sae_labels = [label for _, label, sae in built["sae"] if sae is not None]
    rule_positions: list[list[int | None]] = []
    if backbone is not None:
        backbone = backbone.to(device=context.device, dtype=context.dtype)
        saes = [sae.to(device=context.device, dtype=context.dtype) for sae in saes]
        problems += _check_saes(backbone, saes, spec)
        rule_positions, found = _rule_positions(backbone, saes, spec)
        problems += found
        components = [item for items in built.values() for item in items]
        problems += _compatibility_problems(backbone, saes, components)
    if problems:
        raise SpecError(problems)
    return RunPlan(
        spec=spec,
        context=context,
        resolved=resolved,
        backbone=backbone,
        saes=saes,
        dataset=dataset,
        sae_labels=sae_labels,
        attributors=attributors,
        metrics=metrics,
        rule_positions=rule_positions,
    )


def build_plan(spec: RunSpec, host: Any, base_dir: pathlib.Path | None = None) -> RunPlan:
    """The plan of a run, built the same way in the driver and in every worker that computes its units.

    Seeds torch's global generator with the run's seed first, so that components initialised at random
    (an untrained SAE, say) get the same weights in every process.
    """
    torch.manual_seed(spec.run.seed)
    return prepare(spec, host, base_dir)


def _compatibility_problems(
    backbone: Any, saes: list[Any], components: list[tuple[str, str, Any]]
) -> list[tuple[str, str]]:
    """What each component's optional ``check_compatible(backbone, saes)`` finds, at the component's path."""
    problems = []
    for path, _, component in components:
        check = getattr(component, "check_compatible", None)
        if component is None or not callable(check):
            continue
        try:
            found = check(backbone, saes)
        except CafeError as exc:
            found = [str(exc)]
        problems.extend((path, message) for message in found)
    return problems


def _rule_positions(backbone: Any, saes: list[Any], spec: RunSpec) -> tuple[list[list[int | None]], list]:
    """Each rule's token index at each SAE's layer, and the problems of rules the backbone cannot serve."""
    positions, problems = [], []
    for sae in saes:
        per_rule = []
        layer = sae.layer if sae.layer is not None and 0 <= sae.layer < backbone.depth else 0  # a bad layer is reported
        for j, rule in enumerate(spec.targets):
            try:
                per_rule.append(rule_position(rule.token, backbone, layer))
            except SpecError as exc:
                where = f"targets[{j}].token" if len(spec.targets) > 1 else "targets.token"
                problems.extend((where, message) for _, message in exc.problems if (where, message) not in problems)
                per_rule.append(None)
        positions.append(per_rule)
    return positions, problems
