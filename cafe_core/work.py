"""The work of a run as an executor sees it: computed here, or described for a worker elsewhere.

An executor receives a :class:`RunWork`. In the driver's process, ``work(unit)`` yields the unit's pieces.
A worker in another process or on another machine gets only what it cannot rebuild itself:

* once, the run's canonical spec and the folder its relative paths start from (``work.spec``,
  ``work.base_dir``), from which :class:`SpecWorker` builds the plan, so the model loads once per worker;
* per unit, the :class:`~cafe_core.records.WorkUnit` (its key and dataset indices) and ``work.stored(unit)``,
  what the run store already holds for the unit's images. Only the driver opens the store, so it reads this
  when it sends the unit: a unit never started gets an empty snapshot and is computed from scratch; one that
  a killed run or a dead worker left half done gets the keys of what is stored and the heatmaps still to be
  scored, and the worker computes only what is missing, as a resumed local run does.

The worker sends back :class:`~cafe_core.records.UnitResult` pieces (plain Python and numpy values), and
the driver commits them; workers never write the store.
"""

from __future__ import annotations

import pathlib
from typing import Any, Iterator

import torch

from .plan import RunPlan, build_plan
from .plugins import get_host
from .records import UnitResult, WorkUnit
from .spec import load_spec
from .store import RunStore, StoredUnit
from .worker import UnitWorker

__all__ = ["RunWork", "SpecWorker"]


class RunWork:
    """The units' work of one run, held by the driver.

    Parameters
    ----------
    plan : RunPlan
        The driver's plan.
    store : RunStore
        The run's store (read here, written only through the executor's ``commit``).
    base_dir : path
        The folder the spec's relative paths start from.

    Attributes
    ----------
    spec : dict
        The canonical spec, as JSON-like data.
    base_dir : str
        The folder relative paths start from; it must hold the same files wherever a worker runs.
    floors : list
        The activation floors measured when the run started, as lists (``None`` for a rule without one), for
        :class:`SpecWorker`.
    """

    def __init__(self, plan: RunPlan, store: RunStore, base_dir: str | pathlib.Path):
        self.spec: dict[str, Any] = plan.spec.canonical()
        self.base_dir = str(base_dir)
        self.floors = [[None if floor is None else floor.tolist() for floor in per_rule] for per_rule in plan.floors]
        self._metrics = list(plan.metrics)
        self._store = store
        self._local = UnitWorker(plan, store.stored_work, store.heatmap)

    def __call__(self, unit: WorkUnit) -> Iterator[UnitResult]:
        """Compute ``unit`` in this process."""
        return self._local(unit)

    def stored(self, unit: WorkUnit) -> StoredUnit:
        """What the store holds for ``unit``'s images now: send it with the unit to a worker elsewhere."""
        return self._store.stored_unit(list(unit.image_ids), self._metrics)


class SpecWorker:
    """Computes units of a run in a process that does not hold its run store.

    Parameters
    ----------
    spec : dict
        The run's canonical spec (``RunWork.spec``).
    base_dir : str
        The folder its relative paths start from (``RunWork.base_dir``).
    floors : list, optional
        The run's activation floors (``RunWork.floors``), which the driver measured when the run started.
    host : PluginHost, optional
        The plugins to build it with; defaults to every plugin installed where the worker runs.
    """

    def __init__(self, spec: dict[str, Any], base_dir: str, floors: list | None = None, host: Any = None) -> None:
        run_spec, _ = load_spec(spec)
        self.plan = build_plan(run_spec, host or get_host(), pathlib.Path(base_dir))
        self.plan.floors = [
            [None if floor is None else torch.tensor(floor, dtype=torch.float64) for floor in per_rule]
            for per_rule in floors or []
        ]

    def __call__(self, unit: WorkUnit, stored: StoredUnit) -> Iterator[UnitResult]:
        """The pieces of ``unit``, given what the driver read from the store for it."""
        return UnitWorker(self.plan, stored.stored_work, stored.heatmap)(unit)
