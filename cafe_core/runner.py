"""``run(spec)``: explain the selected latents on every image and score every heatmap."""

from __future__ import annotations

import json
import pathlib
import sys
import tempfile
import warnings
import zlib
from typing import Any

import torch
from tqdm.auto import tqdm

from .executors import Executor, InProcessExecutor
from .image_listing import current_listing, file_hash, reconcile
from .plan import RunPlan, prepare
from .plugins import get_host
from .records import UnitResult, WorkUnit
from .results import Results
from .run_lock import RunLock
from .spec import RunSpec, load_spec, stored_spec_data
from .store import RunDirectoryError, RunStore, make_run_directory
from .worker import NonFiniteError, UnitWorker

__all__ = ["run", "NonFiniteError"]

# Execution settings that do not change results, so a run may resume with other values.
_EXECUTION_ONLY = ("batch_size", "device")


def _comparable(spec: dict[str, Any]) -> dict[str, Any]:
    """The canonical form of a stored spec (written with today's keys) without its execution-only settings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # a run stored before a key was renamed
        spec = RunSpec.model_validate(stored_spec_data(spec)).canonical()
    return {**spec, "run": {k: v for k, v in spec.get("run", {}).items() if k not in _EXECUTION_ONLY}}


def _open_store(directory: pathlib.Path, canonical: dict[str, Any], plan: RunPlan, host: Any) -> RunStore:
    """The run store of ``directory``, refusing one that holds a run of another spec."""
    store = RunStore(directory)
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
        store.set_meta("seed", plan.context.seed)
    store.set_meta("higher_is_better", plan.higher_is_better())
    return store


def _units(image_ids: list[str], batch_size: int) -> list[WorkUnit]:
    """Batches of the listing; a unit's key names its images, so a changed listing never skips a batch."""
    units = []
    for start in range(0, len(image_ids), batch_size):
        end = min(start + batch_size, len(image_ids))
        digest = zlib.crc32("\n".join(image_ids[start:end]).encode())
        units.append(WorkUnit(key=f"images[{start}:{end}]#{digest:08x}", indices=tuple(range(start, end))))
    return units


def _check_images(store: RunStore, plan: RunPlan, n_images: int) -> list[str]:
    """Record the dataset's listing and fingerprints; refuse images that changed since they were computed."""
    entries, changed = reconcile(
        current_listing(plan.dataset, n_images), store.image_entries(),
        lambda index: file_hash(plan.dataset.image_file(index)[1]),
    )
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise RunDirectoryError(
            f"{len(changed)} image(s) changed since this run in {store.directory} computed them: {shown}; "
            "restore them to resume, or start a new output directory (a changed image under a new file name "
            "is a new image)"
        )
    store.set_listing(entries)
    return [entry.image_id for entry in entries]


def _floors(store: RunStore, plan: RunPlan, image_ids: list[str]) -> list[list[torch.Tensor | None]]:
    """Per SAE and rule, each latent's floor: ``min_relative_activation`` times its scale over the run's images.

    The scales are computed once, over the images of the run when it starts (one forward pass to each SAE's
    layer per batch), and kept in the store's ``activation_scales``: a resumed run reuses them, so that every
    image is judged by the same floor even when images were added since.
    """
    rules = plan.spec.targets
    if all(rule.min_relative_activation <= 0 for rule in rules):
        return []
    stored = store.get_meta("activation_scales")
    expected = [[rule.min_relative_activation > 0 for rule in rules] for _ in plan.saes]
    scales = None
    if isinstance(stored, dict) and all(isinstance(stored.get(label), list) for label in plan.sae_labels):
        found = [stored[label] for label in plan.sae_labels]
        if [[entry is not None for entry in per_rule] for per_rule in found] == expected:
            scales = [[None if e is None else torch.tensor(e, dtype=torch.float64) for e in per_rule]
                      for per_rule in found]
    if scales is None:
        worker = UnitWorker(plan, store.stored_work, store.heatmap)
        for unit in _units(image_ids, plan.context.batch_size):
            scales = worker.activation_scales(unit, scales)
        if scales is None:  # no images
            return []
        store.set_meta("activation_scales", {
            label: [None if s is None else s.tolist() for s in per_rule]
            for label, per_rule in zip(plan.sae_labels, scales)
        })
    return [
        [None if scale is None else rule.min_relative_activation * scale for rule, scale in zip(rules, per_rule)]
        for per_rule in scales
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
    canonical = plan.spec.canonical()
    make_run_directory(directory)
    with RunLock(directory), _open_store(directory, canonical, plan, host) as store:
        (directory / "spec.json").write_text(_json(canonical))
        (directory / "versions.json").write_text(_json(store.get_meta("versions")))
        image_ids = _check_images(store, plan, n_images)
        plan.floors = _floors(store, plan, image_ids)
        done = store.finished_units()
        units = [u for u in _units(image_ids, plan.context.batch_size) if u.key not in done]
        show = sys.stderr.isatty() if progress is None else progress
        with tqdm(total=len(units), desc="cafe run", unit="batch", disable=not show) as bar:

            def commit(piece: UnitResult) -> None:
                store.write(piece)
                bar.update(int(piece.complete))

            worker = UnitWorker(plan, store.stored_work, store.heatmap)
            (executor or InProcessExecutor()).execute(units, worker, commit)
    results = Results(directory)
    results.to_csv()
    return results


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"
