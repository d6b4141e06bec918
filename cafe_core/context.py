"""The execution settings a run hands every component."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import ContextManager, Iterator

import torch

__all__ = ["RunContext"]


@dataclass(frozen=True)
class RunContext:
    """Execution settings every component receives from the run, so that no method can miss them.

    Attributes
    ----------
    batch_size : int
        Largest number of images a component may push through the model at once (internal batching of
        integration steps, insertion steps and occlusions all respect it).
    device : torch.device
        Where the model and inputs live.
    dtype : torch.dtype
        Floating point type of the inputs.
    seed : int
        Seed for any randomness (baselines, random rankings, noise tunnels).
    autocast : torch.dtype or None
        Lower precision for the passes of attributors and metrics (``torch.bfloat16`` or
        ``torch.float16``), entered by :meth:`precision`; ``None`` (the default) computes in ``dtype``.
    """

    batch_size: int = 16
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    seed: int = 0
    autocast: torch.dtype | None = None

    def precision(self) -> ContextManager[None]:
        """:func:`torch.autocast` on ``device`` with ``autocast``, or nothing when it is ``None``."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator seeded from ``seed + offset``; reproducible across devices."""
        return torch.Generator().manual_seed(self.seed + offset)

    def chunks(self, n: int) -> Iterator[slice]:
        """Consecutive slices of at most ``batch_size`` rows covering ``range(n)``."""
        for start in range(0, n, self.batch_size):
            yield slice(start, min(start + self.batch_size, n))
