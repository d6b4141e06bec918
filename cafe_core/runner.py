"""``run(spec)``: explain the selected latents on every image and score every heatmap."""

from __future__ import annotations

import json
import pathlib
import sys
import tempfile
import warnings
from typing import Any

import torch
from tqdm.auto import tqdm

from .activation_floor import activation_floors
from .executors import Executor, InProcessExecutor
from .plan import RunPlan, prepare
from .plugins import get_host
from .records import UnitResult
from .results import Results
from .run_lock import RunLock
from .spec import RunSpec, load_spec, stored_spec_data
from .store import RunDirectoryError, RunStore, make_run_directory
from .unit_stream import stream_units
from .worker import NonFiniteError, UnitWorker

__all__ = ["run", "NonFiniteError"]

# Execution settings that do not change results, so a run may resume with other values.
_EXECUTION_ONLY = ("batch_size", "device", "paranoid")


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


def run(
    spec: RunSpec | dict[str, Any] | str | pathlib.Path,
    out: str | pathlib.Path | None = None,
    *,
    host: Any = None,
    executor: Executor | None = None,
    progress: bool | None = None,
    paranoid: bool | None = None,
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
    paranoid : bool, optional
        Overrides ``[run] paranoid``: check that the backbone and the SAEs are unchanged after every call of
        every component (by default, after the first call of each).

    Returns
    -------
    Results
        The tidy table (also written to ``<out>/results.csv``), heatmaps and curves.
    """
    host = host or get_host()
    spec, base_dir = load_spec(spec)
    if paranoid is not None:
        spec = spec.model_copy(update={"run": spec.run.model_copy(update={"paranoid": paranoid})})
    torch.manual_seed(spec.run.seed)  # before building, so randomly initialised components are reproducible
    plan = prepare(spec, host, base_dir)
    directory = pathlib.Path(out) if out is not None else pathlib.Path(tempfile.mkdtemp(prefix="cafe-run-"))
    n_images = len(plan.dataset) if spec.run.limit is None else min(spec.run.limit, len(plan.dataset))
    canonical = plan.spec.canonical()
    make_run_directory(directory)
    with RunLock(directory), _open_store(directory, canonical, plan, host) as store:
        (directory / "spec.json").write_text(_json(canonical))
        (directory / "versions.json").write_text(_json(store.get_meta("versions")))
        batch_size = plan.context.batch_size
        plan.floors = activation_floors(store, plan, n_images)
        show = sys.stderr.isatty() if progress is None else progress
        with tqdm(total=-(-n_images // batch_size), desc="cafe run", unit="batch", disable=not show) as bar:

            def commit(piece: UnitResult) -> None:
                store.write(piece)
                bar.update(int(piece.complete))

            units = stream_units(store, plan, n_images, batch_size, on_skip=lambda unit: bar.update(1))
            worker = UnitWorker(plan, store.stored_work, store.heatmap)
            (executor or InProcessExecutor()).execute(units, worker, commit)
    results = Results(directory)
    results.to_csv()
    return results


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"
