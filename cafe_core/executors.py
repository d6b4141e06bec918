"""Executors: how the units of work of a run are carried out.

A unit of work is a batch of images with everything to explain on them. Units are independent and all
their results go to the run store, so an executor may run them in any order, in any process, on any
machine that can reach the store; the in-process executor below runs them one after another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

__all__ = ["Executor", "InProcessExecutor", "WorkUnit"]


@dataclass(frozen=True)
class WorkUnit:
    """A batch of dataset indices; ``key`` names it in the run store."""

    key: str
    indices: tuple[int, ...]


class Executor(Protocol):
    """Runs ``work(unit)`` for every unit; ``progress(n)`` is called as units finish."""

    def execute(
        self, units: Sequence[WorkUnit], work: Callable[[WorkUnit], None], progress: Callable[[int], None]
    ) -> None: ...


class InProcessExecutor:
    """Runs the units sequentially in this process."""

    def execute(
        self, units: Sequence[WorkUnit], work: Callable[[WorkUnit], None], progress: Callable[[int], None]
    ) -> None:
        """Run every unit in order."""
        for unit in units:
            work(unit)
            progress(1)
