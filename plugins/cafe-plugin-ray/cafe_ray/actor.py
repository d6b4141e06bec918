"""The Ray actor that computes units: the plan built once per worker, each unit's pieces streamed back."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Iterator

import ray

from cafe_core.records import UnitResult, WorkUnit
from cafe_core.store import StoredUnit
from cafe_core.work import SpecWorker

__all__ = ["UnitActor", "UnitTiming", "RemoteUnitActor"]


@dataclass(frozen=True)
class UnitTiming:
    """How one unit went on its worker, measured there.

    Attributes
    ----------
    unit : str
        The unit's key.
    pid : int
        The worker's process id.
    host : str
        The worker's machine.
    compute_seconds : float
        Computing the unit's pieces.
    plan_seconds : float
        Building the plan before this unit: the worker's first unit only, zero after.
    round_trip_seconds : float
        From the driver sending the unit to receiving this timing, its last item, measured by the driver
        (zero until then). What exceeds ``plan_seconds + compute_seconds`` is the cost of the Ray path.
    """

    unit: str
    pid: int
    host: str
    compute_seconds: float
    plan_seconds: float
    round_trip_seconds: float = 0.0


class UnitActor:
    """Computes units of one run in a Ray worker process.

    Parameters
    ----------
    spec : dict
        The run's canonical spec.
    base_dir : str
        The folder its relative paths start from.
    floors : list
        The run's activation floors (``RunWork.floors``).
    """

    def __init__(self, spec: dict[str, Any], base_dir: str, floors: list) -> None:
        self._spec, self._base_dir, self._floors = spec, base_dir, floors
        self._worker: SpecWorker | None = None

    def run(self, unit: WorkUnit, stored: StoredUnit) -> Iterator[UnitResult | UnitTiming]:
        """The unit's pieces as they are computed, then its :class:`UnitTiming`.

        The plan is built on the first call rather than in the constructor, so that an error in building it
        reaches the driver as the original exception (a spec problem on this machine, say).
        """
        plan_seconds = 0.0
        if self._worker is None:
            start = time.perf_counter()
            self._worker = SpecWorker(self._spec, self._base_dir, self._floors)
            plan_seconds = time.perf_counter() - start
        start = time.perf_counter()
        yield from self._worker(unit, stored)
        yield UnitTiming(unit.key, os.getpid(), socket.gethostname(), time.perf_counter() - start, plan_seconds)


# The driver replaces a dead worker itself (see cafe_ray.pool), so Ray restarts none.
RemoteUnitActor = ray.remote(max_restarts=0)(UnitActor)
