"""Executors: how the units of work of a run are carried out.

A unit of work is a batch of images with everything to explain on them. Units are independent: a worker turns
one into :class:`~cafe_core.records.UnitResult` pieces, and the executor hands each piece to ``commit``, which
writes it to the run store in one transaction (the last piece of a unit marks it finished). An executor may
therefore run units in any order, in any process or on any machine, as long as the pieces come back to
``commit`` in the driver; the in-process executor below runs them one after another. Executors are
registered through the ``cafe_register_executors`` hook and picked by ``[run] executor`` in a spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, Sequence

from .errors import CafeError
from .records import UnitResult, WorkUnit

__all__ = ["ExecutionReport", "Executor", "InProcessExecutor", "UnitFailedError", "WorkUnit"]

Work = Callable[[WorkUnit], Iterable[UnitResult]]
Commit = Callable[[UnitResult], None]


@dataclass(frozen=True)
class ExecutionReport:
    """What an executor did with the units of a run.

    Attributes
    ----------
    done : int
        Units computed and committed as finished.
    retried : int
        Times a unit was sent again after the worker computing it died.
    failed : int
        Units given up (their worker died more often than the executor retries).
    workers : int
        Workers the units were spread over.
    finished_before : int
        Units an earlier run into the same directory had already finished (not computed again).
    """

    done: int = 0
    retried: int = 0
    failed: int = 0
    workers: int = 1
    finished_before: int = 0

    def summary(self) -> str:
        """One line, e.g. ``"4 units done on 2 workers (3 finished before), 1 retried, 0 failed"``."""
        before = f" ({self.finished_before} finished before)" if self.finished_before else ""
        return (
            f"{_count(self.done, 'unit')} done on {_count(self.workers, 'worker')}{before}, "
            f"{self.retried} retried, {self.failed} failed"
        )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


class UnitFailedError(CafeError):
    """A unit of work could not be completed: its worker died more often than the executor retries.

    Attributes
    ----------
    units : list of str
        The keys of the units given up.
    report : ExecutionReport
        What the executor did up to the failure.
    """

    def __init__(self, message: str, units: Sequence[str], report: ExecutionReport) -> None:
        super().__init__(message)
        self.units = list(units)
        self.report = report

    def __reduce__(self) -> tuple:
        return type(self), (str(self), self.units, self.report)


class Executor(Protocol):
    """Runs ``work(unit)`` for every unit and passes every piece of its result to ``commit``.

    ``work`` is a :class:`cafe_core.work.RunWork`: besides computing a unit here (``work(unit)``), it
    describes the run for a worker elsewhere (``work.spec``, ``work.base_dir``, ``work.stored(unit)``).
    ``commit`` must be called in the calling process. ``execute`` returns an :class:`ExecutionReport`, or
    ``None`` (the runner then counts the finished units itself).

    ``units`` is a lazy stream (the dataset is read as it is consumed): an executor takes units from it as it
    has room for them, in the driver's thread, rather than listing it whole.
    """

    def execute(self, units: Iterable[WorkUnit], work: Work, commit: Commit) -> ExecutionReport | None: ...


class InProcessExecutor:
    """Runs the units sequentially in this process, committing each piece as it is produced."""

    def execute(self, units: Iterable[WorkUnit], work: Work, commit: Commit) -> ExecutionReport:
        """Run every unit in order."""
        done = 0
        for unit in units:
            for piece in work(unit):
                commit(piece)
            done += 1
        return ExecutionReport(done=done)
