"""``run(spec)``: explain the selected latents on every image and score every heatmap."""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import sys
import tempfile
import warnings
from typing import Any

from tqdm.auto import tqdm

from .activation_floor import activation_floors
from .executors import ExecutionReport, Executor, InProcessExecutor
from .plan import RunPlan, build_plan
from .plugins import get_host
from .records import UnitResult, WorkUnit
from .results import Results
from .run_lock import RunLock
from .spec import RunSpec, load_spec, stored_spec_data
from .store import RunDirectoryError, RunStore, make_run_directory
from .unit_stream import stream_units
from .work import RunWork
from .worker import NonFiniteError

__all__ = ["run", "NonFiniteError"]

_log = logging.getLogger(__name__)

# Execution settings that do not change results, so a run may resume with other values.
_EXECUTION_ONLY = ("batch_size", "device", "executor", "paranoid")


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
        How units of work are executed; defaults to the spec's ``[run] executor`` (in-process unless it
        names another).
    progress : bool, optional
        Show a progress bar; defaults to whether stderr is a terminal.
    paranoid : bool, optional
        Overrides ``[run] paranoid``: check that the backbone and the SAEs are unchanged after every call of
        every component (by default, after the first call of each).

    Returns
    -------
    Results
        The tidy table (also written to ``<out>/results.csv``), heatmaps and curves; its ``execution`` is
        the :class:`~cafe_core.executors.ExecutionReport` of this call (units done, retried, failed).

    Raises
    ------
    UnitFailedError
        When the executor gave a unit up; everything committed before stays, and the same call resumes.
    """
    host = host or get_host()
    spec, base_dir = load_spec(spec, host)
    if paranoid is not None:
        spec = spec.model_copy(update={"run": spec.run.model_copy(update={"paranoid": paranoid})})
    plan = build_plan(spec, host, base_dir)
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
        units_done = {"finished": 0, "skipped": 0}
        with tqdm(total=-(-n_images // batch_size), desc="cafe run", unit="batch", disable=not show) as bar:

            def commit(piece: UnitResult) -> None:
                store.write(piece)
                if piece.complete:
                    units_done["finished"] += 1
                    bar.update()

            def skip(unit: WorkUnit) -> None:
                units_done["skipped"] += 1
                bar.update()

            units = stream_units(store, plan, n_images, batch_size, on_skip=skip)
            work = RunWork(plan, store, base_dir)
            report = (executor or _spec_executor(plan)).execute(units, work, commit)
        report = dataclasses.replace(
            report or ExecutionReport(done=units_done["finished"]), finished_before=units_done["skipped"]
        )
    _log.info("cafe run: %s", report.summary())
    results = Results(directory)
    results.execution = report
    results.to_csv()
    return results


def _spec_executor(plan: RunPlan) -> Executor:
    """The executor the spec names (in-process when it names an optional one that is not installed)."""
    entries = plan.resolved["executor"]
    return entries[0].build() if entries else InProcessExecutor()


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"
