"""One unit of work: select the targets of a batch of images, explain them, score every heatmap.

The worker reads nothing but the plan and what the store already holds, and writes nothing: it yields
:class:`~cafe_core.records.UnitResult` pieces that the executor hands to whoever owns the run store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from .component_errors import blame
from .errors import CafeError
from .metric_output import check_metric_result
from .model_guard import ModelGuard, modules_of
from .plan import RunPlan
from .protocols import Attribution, MetricResult, TargetFunction
from .records import HeatmapRecord, ScoreRecord, TargetKey, TargetRecord, UnitResult, WorkUnit
from .selection import activation_scales, rule_values, select_targets
from .store import StoredWork

__all__ = ["NonFiniteError", "UnitWorker"]


class NonFiniteError(CafeError):
    """A model input, activation or heatmap contains NaN or infinity."""


def check_finite(tensor: torch.Tensor, what: str, fix: str) -> None:
    """Raise :class:`NonFiniteError` naming ``what`` and ``fix`` if ``tensor`` has NaN or infinite values."""
    if not torch.isfinite(tensor).all():
        raise NonFiniteError(f"{what} contains NaN or infinite values; {fix}")


@dataclass
class _Todo:
    """An explained target with what is still missing for it, per attributor label."""

    record: TargetRecord
    row: int  # of the target's image in the unit's batch
    missing_metrics: dict[str, set[str]] = field(default_factory=dict)
    heatmap_stored: dict[str, bool] = field(default_factory=dict)


class UnitWorker:
    """Does units of work of one plan.

    Parameters
    ----------
    plan : RunPlan
        The built components and run context.
    stored_work : callable
        ``stored_work(image_ids) -> StoredWork``: what the run store already holds for these images.
    stored_heatmap : callable
        ``stored_heatmap(key, attributor) -> numpy.ndarray``: a heatmap the store holds.
    """

    def __init__(
        self,
        plan: RunPlan,
        stored_work: Callable[[Sequence[str]], StoredWork],
        stored_heatmap: Callable[[TargetKey, str], np.ndarray | None],
    ) -> None:
        self.plan = plan
        self.stored_work = stored_work
        self.stored_heatmap = stored_heatmap
        watched = [("backbone", module) for module in modules_of(plan.backbone)]
        for label, sae in zip(plan.sae_labels, plan.saes):
            watched += [(f"SAE {label!r}", module) for module in modules_of(sae)]
        self.guard = ModelGuard(watched, paranoid=plan.spec.run.paranoid)

    def __call__(self, unit: WorkUnit) -> Iterator[UnitResult]:
        """The unit's results: the targets of each SAE, then each chunk of heatmaps and scores, then completion."""
        plan, context = self.plan, self.plan.context
        items, x = self._inputs(unit)
        image_ids = [item.image_id for item in items]
        annotations = [item.info for item in items]
        for sae_index, sae in enumerate(plan.saes):
            selected = self._select(sae_index, sae, x, image_ids)
            yield UnitResult(unit.key, targets=selected)
            rows = {image_id: row for row, image_id in enumerate(image_ids)}
            todo = self._todo([r for r in selected if r.explained], rows, image_ids)
            for start in range(0, len(todo), context.batch_size):
                yield self._explain_chunk(unit.key, sae, x, annotations, todo[start : start + context.batch_size])
        yield UnitResult(unit.key, complete=True)

    def _inputs(self, unit: WorkUnit) -> tuple[list[Any], torch.Tensor]:
        """The unit's dataset items and their model inputs, checked to be finite."""
        plan, context = self.plan, self.plan.context
        with blame(f"dataset {plan.spec.dataset.display_name!r}", f"reading the images of {unit.key}"):
            items = [plan.dataset[i] for i in unit.indices]
        image_ids = [item.image_id for item in items]
        with blame(f"backbone {plan.spec.backbone.display_name!r}", f"preprocessing images {image_ids}"):
            x = plan.backbone.preprocess([item.image for item in items]).to(context.device, context.dtype)
        check_finite(x, f"preprocessed images {image_ids}", "check the image files")
        return items, x

    # -- selection --------------------------------------------------------------------------------------

    def _select(self, sae_index: int, sae: Any, x: torch.Tensor, image_ids: list[str]) -> list[TargetRecord]:
        """The union of every selection rule's targets on these images (each target once)."""
        with torch.no_grad():
            with blame(f"backbone {self.plan.spec.backbone.display_name!r}",
                       f"computing layer {sae.layer} of images {image_ids}"):
                h = self.plan.backbone.forward_to(x, sae.layer)
            check_finite(h, f"hidden states at layer {sae.layer} of images {image_ids}",
                         "the backbone weights may be corrupt; check the checkpoint")
            chosen: dict[TargetKey, TargetRecord] = {}
            floors = self.plan.floors[sae_index] if self.plan.floors else [None] * len(self.plan.spec.targets)
            for rule, fixed, floor in zip(self.plan.spec.targets, self.plan.rule_positions[sae_index], floors):
                with blame(f"SAE {self.plan.sae_labels[sae_index]!r}", f"encoding images {image_ids}"):
                    records = select_targets(
                        _rule_codes(rule, sae, h), image_ids=image_ids, sae=self.plan.sae_labels[sae_index],
                        layer=sae.layer, backbone=self.plan.backbone, latents=rule.latents,
                        select=rule.select, count=rule.count, position=fixed,
                        min_activation=rule.min_activation, seed=self.plan.context.seed, floors=floor,
                    )
                for record in records:
                    chosen.setdefault(record.key, record)
        return list(chosen.values())

    def activation_scales(self, unit: WorkUnit, scales: list[list[torch.Tensor | None]] | None = None
                          ) -> list[list[torch.Tensor | None]]:
        """Per SAE and rule, each latent's largest value where the rule reads it, over the unit's images.

        Combined with ``scales`` (the result for the units before); ``None`` for a rule without a relative
        floor (``min_relative_activation = 0``). See :func:`cafe_core.selection.activation_scales`.
        """
        plan = self.plan
        items, x = self._inputs(unit)
        image_ids = [item.image_id for item in items]
        n_prefix = len(plan.backbone.prefix_tokens)
        out = []
        for sae_index, sae in enumerate(plan.saes):
            per_rule: list[torch.Tensor | None] = []
            h = None
            for rule_index, (rule, fixed) in enumerate(zip(plan.spec.targets, plan.rule_positions[sae_index])):
                before = scales[sae_index][rule_index] if scales else None
                if rule.min_relative_activation <= 0:
                    per_rule.append(None)
                    continue
                with torch.no_grad():
                    if h is None:
                        with blame(f"backbone {plan.spec.backbone.display_name!r}",
                                   f"computing layer {sae.layer} of images {image_ids}"):
                            h = plan.backbone.forward_to(x, sae.layer)
                    with blame(f"SAE {plan.sae_labels[sae_index]!r}", f"encoding images {image_ids}"):
                        values = rule_values(_rule_codes(rule, sae, h), fixed, n_prefix)
                per_rule.append(activation_scales(values, before))
            out.append(per_rule)
        return out

    # -- explanation ------------------------------------------------------------------------------------

    def _todo(self, explained: list[TargetRecord], rows: dict[str, int], image_ids: list[str]) -> list[_Todo]:
        """The explained targets that still miss a heatmap or a score."""
        stored = self.stored_work(sorted(set(image_ids)))
        todo = []
        for record in explained:
            item = _Todo(record, rows[record.key.image_id])
            for label in self.plan.attributors:
                missing = stored.missing_metrics(record.key, label, self.plan.metrics)
                has_heatmap = stored.has_heatmap(record.key, label)
                if missing or not has_heatmap:
                    item.missing_metrics[label] = missing
                    item.heatmap_stored[label] = has_heatmap
            if item.missing_metrics:
                todo.append(item)
        return todo

    def _explain_chunk(
        self, unit: str, sae: Any, x: torch.Tensor, annotations: list[dict], chunk: list[_Todo]
    ) -> UnitResult:
        """Every attributor's heatmaps of a chunk of targets, then each metric once over all of them.

        Scoring the heatmaps of all attributors in one call lets a metric batch their curves' forward passes
        together (an insertion curve of every attributor for the same target in the same batches).
        """
        plan = self.plan
        rows = torch.as_tensor([t.row for t in chunk], device=x.device)
        xs = x[rows]
        target = TargetFunction.for_targets(plan.backbone, sae, [t.record.key.target for t in chunk])
        result = UnitResult(unit)
        heatmaps: dict[str, dict[int, torch.Tensor]] = {}
        for label, attributor in plan.attributors.items():
            index = [i for i, t in enumerate(chunk) if label in t.missing_metrics]
            if not index:
                continue
            keys = [chunk[i].record.key for i in index]
            selected = torch.as_tensor(index, device=x.device)
            if all(chunk[i].heatmap_stored[label] for i in index):
                heatmap = self._stored_heatmaps(keys, label, xs)
            else:
                heatmap, records = self._attribute(label, attributor, target.select(selected), xs[selected], keys)
                result.heatmaps += records
            heatmaps[label] = dict(zip(index, heatmap))
        for metric_label, metric in plan.metrics.items():
            pairs = [(label, i) for label in heatmaps for i in heatmaps[label]
                     if metric_label in chunk[i].missing_metrics[label]]
            if not pairs:
                continue
            index = torch.as_tensor([i for _, i in pairs], device=x.device)
            heatmap = torch.stack([heatmaps[label][i] for label, i in pairs])
            with self.guard.watching(f"metric {metric_label!r}"), blame(
                f"metric {metric_label!r}", f"scoring {len(pairs)} heatmaps, the first of {chunk[pairs[0][1]].record.key}"
            ), plan.context.precision():
                scored = metric.evaluate(
                    target.select(index), xs[index], heatmap, plan.context,
                    annotations=[annotations[chunk[i].row] for _, i in pairs],
                )
            keys, labels = [chunk[i].record.key for _, i in pairs], [label for label, _ in pairs]
            check_metric_result(metric_label, scored, keys, labels)
            result.scores += _score_records(keys, labels, metric_label, scored)
        return result

    def _stored_heatmaps(self, keys: list[TargetKey], label: str, like: torch.Tensor) -> torch.Tensor:
        stored = [self.stored_heatmap(key, label) for key in keys]
        return torch.as_tensor(np.stack(stored), device=like.device, dtype=like.dtype)

    def _attribute(
        self, label: str, attributor: Any, target: TargetFunction, xs: torch.Tensor, keys: list[TargetKey]
    ) -> tuple[torch.Tensor, list[HeatmapRecord]]:
        """The heatmaps ``[N, gh, gw]`` of one attributor, checked, and their records."""
        with self.guard.watching(f"attributor {label!r}"), blame(
            f"attributor {label!r}", f"explaining {len(keys)} targets, the first {keys[0]}"
        ), self.plan.context.precision():
            attribution = attributor.attribute(target, xs, self.plan.context)
        fix = "this is a bug of the attributor's plugin; report it to its authors, or leave it out of the spec"
        if not isinstance(attribution, Attribution):
            raise CafeError(
                f"attributor {label!r} returned a {type(attribution).__name__}, not an Attribution, for "
                f"{keys[0]} and {len(keys) - 1} more target(s); {fix}"
            )
        heatmap = attribution.heatmap.detach().to(xs.dtype)  # autocast may have lowered it
        expected = (len(keys), *self.plan.backbone.grid_size)
        if tuple(heatmap.shape) != expected:
            raise CafeError(
                f"attributor {label!r} returned a heatmap of shape {tuple(heatmap.shape)}, expected {expected}, "
                f"for {keys[0]} and {len(keys) - 1} more target(s); {fix}"
            )
        check_finite(heatmap, f"the heatmap of attributor {label!r} for {keys[0]}...",
                     "try run.dtype = \"float64\", or report it to the plugin's authors")
        array = heatmap.cpu().numpy()
        records = [
            HeatmapRecord(key, label, array[i], {k: float(v[i]) for k, v in attribution.info.items()})
            for i, key in enumerate(keys)
        ]
        return heatmap, records


def _rule_codes(rule: Any, sae: Any, h: torch.Tensor) -> torch.Tensor:
    """``[B, T, d]``: the latents a rule chooses among, at every token (only the rule's own, if it lists them)."""
    if rule.latents is None:
        return sae.encode(h)
    flat = h.reshape(-1, h.shape[-1])  # only the requested rows of the dictionary
    return torch.stack(
        [sae.encode_latents(flat, torch.full((len(flat),), n, device=h.device)) for n in rule.latents],
        dim=-1,
    ).reshape(*h.shape[:2], len(rule.latents))


def _score_records(
    keys: list[TargetKey], attributors: list[str], metric: str, result: MetricResult
) -> list[ScoreRecord]:
    def numpy(values: torch.Tensor | None) -> np.ndarray | None:
        if values is None:
            return None
        if values.dtype in (torch.bfloat16, torch.float16):  # from autocast; numpy has no bfloat16
            values = values.float()
        return values.detach().cpu().numpy()

    curve, raw_curve, fractions = numpy(result.curve), numpy(result.raw_curve), numpy(result.fractions)
    return [
        ScoreRecord(
            key=key,
            attributor=attributor,
            metric=metric,
            score=float(result.score[i]),
            curve=None if curve is None else curve[i],
            raw_curve=None if raw_curve is None else raw_curve[i],
            fractions=fractions,
            info={name: float(values[i]) for name, values in result.info.items()},
        )
        for i, (key, attributor) in enumerate(zip(keys, attributors))
    ]
