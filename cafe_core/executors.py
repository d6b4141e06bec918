"""Executors: how the units of work of a run are carried out.

A unit of work is a batch of images with everything to explain on them. Units are independent: a worker turns
one into :class:`~cafe_core.records.UnitResult` pieces, and the executor hands each piece to ``commit``, which
writes it to the run store in one transaction (the last piece of a unit marks it finished). An executor may
therefore run units in any order, in any process or on any machine, as long as the pieces come back to
``commit`` in the driver; the in-process executor below runs them one after another.
"""

from __future__ import annotations

from typing import Callable, Iterable, Protocol

from .records import UnitResult, WorkUnit

__all__ = ["Executor", "InProcessExecutor", "WorkUnit"]

Work = Callable[[WorkUnit], Iterable[UnitResult]]
Commit = Callable[[UnitResult], None]


class Executor(Protocol):
    """Runs ``work(unit)`` for every unit and passes every piece of its result to ``commit``.

    ``units`` is a lazy stream (the dataset is read as it is consumed): an executor takes units from it as it
    has room for them, in the driver's thread, rather than listing it whole.
    """

    def execute(self, units: Iterable[WorkUnit], work: Work, commit: Commit) -> None: ...


class InProcessExecutor:
    """Runs the units sequentially in this process, committing each piece as it is produced."""

    def execute(self, units: Iterable[WorkUnit], work: Work, commit: Commit) -> None:
        """Run every unit in order."""
        for unit in units:
            for piece in work(unit):
                commit(piece)
