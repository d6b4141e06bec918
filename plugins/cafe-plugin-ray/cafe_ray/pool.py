"""A fixed number of worker actors of one run: start, send a unit, replace a dead one, stop."""

from __future__ import annotations

from typing import Any

import ray

from cafe_core.records import WorkUnit
from cafe_core.store import StoredUnit

from .actor import RemoteUnitActor

__all__ = ["WorkerPool"]


class WorkerPool:
    """``size`` actors computing units of one run, each in a slot of its own.

    Parameters
    ----------
    size : int
        Number of workers.
    spec : dict
        The run's canonical spec, sent to each worker once.
    base_dir : str
        The folder its relative paths start from.
    floors : list
        The run's activation floors (``RunWork.floors``).
    num_cpus, num_gpus : float
        What each worker reserves.
    """

    def __init__(
        self, size: int, spec: dict[str, Any], base_dir: str, floors: list, num_cpus: float, num_gpus: float
    ) -> None:
        self._spec = ray.put(spec)
        self._base_dir = base_dir
        self._floors = ray.put(floors)
        self._options = {"num_cpus": num_cpus, "num_gpus": num_gpus}
        self.actors = [self._start() for _ in range(size)]

    def _start(self) -> Any:
        return RemoteUnitActor.options(**self._options).remote(self._spec, self._base_dir, self._floors)

    @property
    def size(self) -> int:
        """Number of slots."""
        return len(self.actors)

    def submit(self, slot: int, unit: WorkUnit, stored: StoredUnit) -> Any:
        """Send ``unit`` to the worker of ``slot``; returns the stream of its pieces (an ObjectRefGenerator)."""
        return self.actors[slot].run.remote(unit, stored)

    def replace(self, slot: int) -> None:
        """Put a new worker in ``slot`` (whose worker died); it builds its plan on its first unit."""
        ray.kill(self.actors[slot], no_restart=True)
        self.actors[slot] = self._start()

    def close(self) -> None:
        """Stop every worker (frees their CPUs and GPUs on a cluster that outlives the run)."""
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
