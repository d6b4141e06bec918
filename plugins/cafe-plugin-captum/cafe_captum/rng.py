"""Seeding the global random generators Captum draws from, without disturbing them for the caller."""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch

__all__ = ["seeded_global_rng"]


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Seed torch's CPU generator, the generator of ``device`` (when CUDA) and numpy's global generator.

    Captum's sampling methods draw from these global generators (``torch.normal``, ``np.random``). Their
    states are saved on entry and restored on exit, so the caller's random streams are untouched.

    Parameters
    ----------
    seed : int
        Seed of every generator (numpy's is taken modulo ``2**32``).
    device : torch.device or str
        The device the sampled tensors live on.
    """
    device = torch.device(device)
    cuda = []
    if device.type == "cuda":
        cuda = [device.index if device.index is not None else torch.cuda.current_device()]
    numpy_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=cuda):
            torch.default_generator.manual_seed(int(seed))
            for index in cuda:
                torch.cuda.default_generators[index].manual_seed(int(seed))
            np.random.seed(int(seed) % 2**32)
            yield
    finally:
        np.random.set_state(numpy_state)
