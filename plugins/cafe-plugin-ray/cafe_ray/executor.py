"""The Ray executor: units of a run sent to worker actors, their pieces committed by the driver as they come.

Each worker gets the run's canonical spec once and builds the plan from it on its first unit (the model
loads once per worker). Per unit it gets the unit (key and dataset indices) and what the run store already
holds for the unit's images (see :mod:`cafe_core.work`), and streams back the unit's
:class:`~cafe_core.records.UnitResult` pieces, which the driver commits one by one, exactly as a local run
does: a worker never opens the store. A unit whose worker dies is sent again, with what its pieces committed
so far, to a new worker in the dead one's slot; after ``max_retries`` such deaths the executor stops sending
units, lets those in flight finish, and raises :class:`~cafe_core.executors.UnitFailedError`.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import time
from typing import Any, Iterable

import ray
from ray.exceptions import ObjectLostError, RayActorError, RayTaskError

from cafe_core.executors import Commit, ExecutionReport, UnitFailedError, Work
from cafe_core.records import UnitResult, WorkUnit

from .actor import UnitTiming
from .cluster import connected, workers_that_fit
from .pool import WorkerPool

__all__ = ["RayExecutor"]

_log = logging.getLogger("cafe_ray")

# What a driver sees when the process computing a unit is gone: the actor died, or its node took the
# unit's pieces with it.
_WORKER_LOST = (RayActorError, ObjectLostError)


class RayExecutor:
    """Computes the units of a run on the workers of a Ray cluster.

    Parameters
    ----------
    address : str, optional
        The cluster (``"auto"``, ``"HOST:6379"``, ``"ray://HOST:10001"``); ``None``: the Ray this process is
        connected to, else ``RAY_ADDRESS``, else a new local cluster stopped after the run.
    num_workers : int, optional
        Worker actors; ``None``: as many as the cluster's resources hold.
    num_cpus, num_gpus : float
        What each worker reserves (``num_gpus = 1``: a GPU per worker).
    max_retries : int
        Times a unit is sent again after its worker died.

    Attributes
    ----------
    timings : list of UnitTiming
        Per unit computed, the worker that computed it and how long it took there (filled by ``execute``).
    """

    def __init__(
        self,
        address: str | None = None,
        num_workers: int | None = None,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        max_retries: int = 2,
    ) -> None:
        self.address = address
        self.num_workers = num_workers
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.max_retries = max_retries
        self.timings: list[UnitTiming] = []

    def execute(self, units: Iterable[WorkUnit], work: Work, commit: Commit) -> ExecutionReport:
        """Compute every unit on the cluster's workers, committing each piece in this process.

        Raises
        ------
        UnitFailedError
            When a unit's worker died more than ``max_retries`` times; the units in flight finish first.
        """
        units = iter(units)
        first = next(units, None)
        if first is None:
            return ExecutionReport(workers=0)
        units = itertools.chain([first], units)
        with connected(self.address):
            size = self.num_workers or workers_that_fit(self.num_cpus, self.num_gpus)
            _log.info("ray: %d workers, %g CPUs and %g GPUs each", size, self.num_cpus, self.num_gpus)
            pool = WorkerPool(size, work.spec, work.base_dir, work.floors, self.num_cpus, self.num_gpus)
            try:
                return _Dispatch(pool, work, commit, self.max_retries, self.timings).run(units)
            finally:
                pool.close()


class _Dispatch:
    """One run's loop: keep every worker busy with a unit, commit what comes back, retry what is lost."""

    def __init__(self, pool: WorkerPool, work: Any, commit: Commit, max_retries: int, timings: list) -> None:
        self.pool, self.work, self.commit = pool, work, commit
        self.max_retries = max_retries
        self.timings = timings
        self.deaths: collections.Counter[str] = collections.Counter()
        self.running: dict[Any, tuple[int, WorkUnit]] = {}  # stream of pieces -> (slot, unit)
        self.sent_at: dict[str, float] = {}
        self.failed: list[str] = []
        self.done = self.retried = 0

    def run(self, units: Iterable[WorkUnit]) -> ExecutionReport:
        """Take units from the stream as workers fall idle (retried units first) until none is left."""
        source, retry = iter(units), collections.deque()
        idle = list(range(self.pool.size))
        while True:
            while idle and not self.failed:
                unit = retry.popleft() if retry else next(source, None)
                if unit is None:
                    break
                slot = idle.pop()
                self.sent_at[unit.key] = time.perf_counter()
                self.running[self.pool.submit(slot, unit, self.work.stored(unit))] = (slot, unit)
            if not self.running:
                break
            [stream], _ = ray.wait(list(self.running), num_returns=1)
            slot, unit = self.running[stream]
            try:
                item = ray.get(next(stream))
            except StopIteration:
                del self.running[stream]
                idle.append(slot)
                continue
            except _WORKER_LOST as exc:
                del self.running[stream]
                self.pool.replace(slot)
                idle.append(slot)
                if self._lost(unit, slot, exc):
                    retry.append(unit)
                continue
            except RayTaskError as exc:  # the unit's own error (a component raised): not a reason to retry
                raise (exc.cause if isinstance(exc.cause, Exception) else exc) from None
            self._receive(item)
        report = self._report()
        if self.failed:
            raise UnitFailedError(self._failure_message(report), self.failed, report)
        return report

    def _receive(self, item: UnitResult | UnitTiming) -> None:
        if isinstance(item, UnitTiming):
            round_trip = time.perf_counter() - self.sent_at[item.unit]
            self.timings.append(dataclasses.replace(item, round_trip_seconds=round_trip))
            return
        self.commit(item)
        self.done += int(item.complete)

    def _lost(self, unit: WorkUnit, slot: int, exc: Exception) -> bool:
        """Count the death of ``unit``'s worker; whether to send the unit again."""
        self.deaths[unit.key] += 1
        cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if self.deaths[unit.key] > self.max_retries:
            _log.error("ray: worker %d died computing unit %s (%s); giving the unit up", slot, unit.key, cause)
            self.failed.append(unit.key)
            return False
        self.retried += 1
        _log.warning("ray: worker %d died computing unit %s (%s); sending it again (retry %d of %d)",
                     slot, unit.key, cause, self.deaths[unit.key], self.max_retries)
        return True

    def _report(self) -> ExecutionReport:
        return ExecutionReport(done=self.done, retried=self.retried, failed=len(self.failed), workers=self.pool.size)

    def _failure_message(self, report: ExecutionReport) -> str:
        units = f"unit {self.failed[0]}" if len(self.failed) == 1 else f"units {', '.join(self.failed)}"
        return (
            f"{units} failed: the Ray worker computing it died {self.max_retries + 1} times "
            f"(max_retries = {self.max_retries}); {report.summary()}. Results committed before are kept: "
            "check the workers' logs for the cause (out of memory? a crash in a component?), then rerun the "
            "same command to resume"
        )
