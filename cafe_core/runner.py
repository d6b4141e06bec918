"""``run(spec)``: explain the selected latents on every image and score every heatmap."""

from __future__ import annotations

import json
import pathlib
import sys
import tempfile
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import CafeError
from .executors import Executor, InProcessExecutor, WorkUnit
from .plan import RunPlan, prepare
from .plugins import get_host
from .protocols import Attribution, MetricResult, TargetFunction
from .results import Results
from .selection import SelectedTarget, select_targets
from .spec import RunSpec, load_spec
from .store import RunDirectoryError, RunStore

__all__ = ["run", "NonFiniteError"]

# Execution settings that do not change results, so a run may resume with other values.
_EXECUTION_ONLY = ("batch_size", "device")


class NonFiniteError(CafeError):
    """A model input, activation or heatmap contains NaN or infinity."""


def _comparable(spec: dict[str, Any]) -> dict[str, Any]:
    spec = {**spec, "run": {k: v for k, v in spec.get("run", {}).items() if k not in _EXECUTION_ONLY}}
    return spec


def _open_store(directory: pathlib.Path, plan: RunPlan, host: Any) -> RunStore:
    store = RunStore(directory)
    canonical = plan.spec.canonical()
    previous = store.get_meta("spec")
    if previous is not None and _comparable(previous) != _comparable(canonical):
        before, now = _comparable(previous), _comparable(canonical)
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        store.close()
        raise RunDirectoryError(
            f"{directory} holds a run of a different spec (sections that differ: {', '.join(changed)}); "
            "use another output directory to start a new run, or the original spec to resume"
        )
    if previous is None:
        store.set_meta("spec", canonical)
        store.set_meta("versions", plan.versions(host))
        store.set_meta("seed", plan.spec.run.seed)
    store.set_meta("higher_is_better", plan.higher_is_better())
    return store


def _check_finite(tensor: torch.Tensor, what: str, fix: str) -> None:
    if not torch.isfinite(tensor).all():
        raise NonFiniteError(f"{what} contains NaN or infinite values; {fix}")


def _metric_rows(
    store_keys: list[tuple], attributors: list[str], label: str, result: MetricResult
) -> list[tuple]:
    rows = []
    for i, (key, attributor) in enumerate(zip(store_keys, attributors)):
        info = {name: float(values[i]) for name, values in result.info.items()}
        rows.append(
            (
                *key, attributor, label, float(result.score[i]),
                None if result.curve is None else result.curve[i],
                None if result.raw_curve is None else result.raw_curve[i],
                result.fractions,
                info,
            )
        )
    return rows


class _UnitWorker:
    """Does one unit of work: targets, heatmaps and scores for a batch of images."""

    def __init__(self, plan: RunPlan, store: RunStore) -> None:
        self.plan = plan
        self.store = store
        self.annotations: list[dict] = []  # ImageItem.info of the unit in progress, for ground-truth metrics

    def __call__(self, unit: WorkUnit) -> None:
        plan, context = self.plan, self.plan.context
        items = [plan.dataset[i] for i in unit.indices]
        image_ids = [item.image_id for item in items]
        self.annotations = [item.info for item in items]
        x = plan.backbone.preprocess([item.image for item in items]).to(context.device, context.dtype)
        _check_finite(x, f"preprocessed images {image_ids}", "check the image files")
        for sae in plan.saes:
            selected = self._select(sae, x, image_ids)
            self.store.write_batch(
                targets=[
                    (image_ids[s.image_row], s.target.layer, s.target.latent, s.target.position, s.position_name,
                     s.activation, s.status)
                    for s in selected
                ]
            )
            explained = [s for s in selected if s.status == "explained"]
            self._explain(sae, x, image_ids, explained)
        self.store.write_batch(unit=unit.key)

    def _select(self, sae: Any, x: torch.Tensor, image_ids: list[str]) -> list[SelectedTarget]:
        """The union of every ``[[targets]]`` rule's targets on these images (each target once)."""
        with torch.no_grad():
            h = self.plan.backbone.forward_to(x, sae.layer)
            _check_finite(h, f"activations at layer {sae.layer} of images {image_ids}",
                          "the backbone weights may be corrupt; check the checkpoint")
            chosen: dict[tuple[int, Any], SelectedTarget] = {}
            for rule in self.plan.spec.targets:
                for s in self._select_rule(rule, sae, h, image_ids):
                    chosen.setdefault((s.image_row, s.target), s)
        return list(chosen.values())

    def _select_rule(self, rule: Any, sae: Any, h: torch.Tensor, image_ids: list[str]) -> list[SelectedTarget]:
        if rule.latents is None:
            codes = sae.encode(h)
        else:  # only the requested rows of the dictionary
            flat = h.reshape(-1, h.shape[-1])
            codes = torch.stack(
                [sae.encode_latents(flat, torch.full((len(flat),), n, device=h.device)) for n in rule.latents],
                dim=-1,
            ).reshape(*h.shape[:2], len(rule.latents))
        return select_targets(
            codes, image_ids=image_ids, layer=sae.layer, backbone=self.plan.backbone, latents=rule.latents,
            select=rule.select, count=rule.count, position=rule.position,
            min_activation=rule.min_activation, seed=self.plan.spec.run.seed,
        )

    def _explain(
        self, sae: Any, x: torch.Tensor, image_ids: list[str], explained: Sequence[SelectedTarget]
    ) -> None:
        """Heatmaps and scores still missing for these targets, ``batch_size`` targets at a time."""
        stored_heatmaps, scored = self.store.stored_work(sorted(set(image_ids)))
        todo = []
        for s in explained:
            key = (image_ids[s.image_row], s.target.layer, s.target.latent, s.target.position)
            needs = {}  # attributor -> (metrics still to score, whether its heatmap is stored)
            for label in self.plan.attributors:
                missing = set(self.plan.metrics) - scored.get((*key, label), set())
                has_heatmap = (*key, label) in stored_heatmaps
                if missing or not has_heatmap:
                    needs[label] = (missing, has_heatmap)
            if needs:
                todo.append((s, key, needs))
        batch = self.plan.context.batch_size
        for start in range(0, len(todo), batch):
            self._explain_chunk(sae, x, todo[start : start + batch])

    def _heatmaps(
        self, label: str, attributor: Any, target: TargetFunction, xs: torch.Tensor, keys: list[tuple],
        all_stored: bool,
    ):
        """``(heatmap [N, gh, gw], rows to store)``: read back when every one is stored, computed otherwise."""
        if all_stored:
            stored = [self.store.heatmap(key, label) for key in keys]
            return torch.as_tensor(np.stack(stored), device=xs.device, dtype=xs.dtype), []
        attribution = attributor.attribute(target, xs, self.plan.context)
        if not isinstance(attribution, Attribution):
            raise CafeError(f"attributor {label!r} returned {type(attribution).__name__}, not an Attribution")
        heatmap = attribution.heatmap.detach()
        expected = (len(keys), *self.plan.backbone.grid_size)
        if tuple(heatmap.shape) != expected:
            raise CafeError(
                f"attributor {label!r} returned a heatmap of shape {tuple(heatmap.shape)}, expected {expected}"
            )
        _check_finite(heatmap, f"the heatmap of attributor {label!r} for {keys[0]}...",
                      "try run.dtype = \"float64\", or report it to the plugin's authors")
        rows = [
            (*key, label, heatmap[i], {k: float(v[i]) for k, v in attribution.info.items()})
            for i, key in enumerate(keys)
        ]
        return heatmap, rows

    def _explain_chunk(self, sae: Any, x: torch.Tensor, chunk: list) -> None:
        """Every attributor's heatmaps of a chunk of targets, then each metric once over all of them.

        Scoring the heatmaps of all attributors in one call lets a metric batch their curves' forward passes
        together (an insertion curve of every attributor for the same target in the same batches).
        """
        plan = self.plan
        rows = torch.as_tensor([s.image_row for s, _, _ in chunk], device=x.device)
        keys = [key for _, key, _ in chunk]
        xs = x[rows]
        target = TargetFunction.for_targets(plan.backbone, sae, [s.target for s, _, _ in chunk])
        heatmaps, heatmap_rows = {}, []
        for label, attributor in plan.attributors.items():
            index = [i for i, (_, _, needs) in enumerate(chunk) if label in needs]
            if index:
                selected = torch.as_tensor(index, device=x.device)
                all_stored = all(chunk[i][2][label][1] for i in index)
                heatmap, stored = self._heatmaps(
                    label, attributor, target.select(selected), xs[selected], [keys[i] for i in index], all_stored
                )
                heatmaps[label] = dict(zip(index, heatmap))
                heatmap_rows += stored
        score_rows = []
        for metric_label, metric in plan.metrics.items():
            pairs = [
                (label, i) for label in heatmaps for i in heatmaps[label] if metric_label in chunk[i][2][label][0]
            ]
            if not pairs:
                continue
            index = torch.as_tensor([i for _, i in pairs], device=x.device)
            extra = {}
            if getattr(metric, "uses_annotations", False):
                extra["annotations"] = [self.annotations[chunk[i][0].image_row] for _, i in pairs]
            heatmap = torch.stack([heatmaps[label][i] for label, i in pairs])
            result = metric.evaluate(target.select(index), xs[index], heatmap, plan.context, **extra)
            labels = [label for label, _ in pairs]
            score_rows += _metric_rows([keys[i] for _, i in pairs], labels, metric_label, result)
        self.store.write_batch(heatmaps=heatmap_rows, scores=score_rows)


def _units(n_images: int, batch_size: int) -> list[WorkUnit]:
    return [
        WorkUnit(key=f"images[{start}:{min(start + batch_size, n_images)}]",
                 indices=tuple(range(start, min(start + batch_size, n_images))))
        for start in range(0, n_images, batch_size)
    ]


def run(
    spec: RunSpec | dict[str, Any] | str | pathlib.Path,
    out: str | pathlib.Path | None = None,
    *,
    host: Any = None,
    executor: Executor | None = None,
    progress: bool | None = None,
) -> Results:
    """Explain and score everything a spec asks for.

    Parameters
    ----------
    spec : RunSpec, dict, or path to a TOML file
        The run spec.
    out : path, optional
        Run directory. If it already holds a run of the same spec, only what is missing is computed.
        Defaults to a new temporary directory.
    host : PluginHost, optional
        The plugins to use; defaults to every installed plugin.
    executor : Executor, optional
        How units of work are executed; defaults to in-process.
    progress : bool, optional
        Show a progress bar; defaults to whether stderr is a terminal.

    Returns
    -------
    Results
        The tidy table (also written to ``<out>/results.csv``), heatmaps and curves.
    """
    host = host or get_host()
    spec, base_dir = load_spec(spec)
    torch.manual_seed(spec.run.seed)  # before building, so randomly initialised components are reproducible
    plan = prepare(spec, host, base_dir)
    directory = pathlib.Path(out) if out is not None else pathlib.Path(tempfile.mkdtemp(prefix="cafe-run-"))
    n_images = len(plan.dataset) if spec.run.limit is None else min(spec.run.limit, len(plan.dataset))
    with _open_store(directory, plan, host) as store:
        (directory / "spec.json").write_text(_json(plan.spec.canonical()))
        (directory / "versions.json").write_text(_json(store.get_meta("versions")))
        done = store.finished_units()
        units = [u for u in _units(n_images, spec.run.batch_size) if u.key not in done]
        show = sys.stderr.isatty() if progress is None else progress
        with tqdm(total=len(units), desc="cafe run", unit="batch", disable=not show) as bar:
            (executor or InProcessExecutor()).execute(units, _UnitWorker(plan, store), bar.update)
    results = Results(directory)
    results.to_csv()
    return results


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"
