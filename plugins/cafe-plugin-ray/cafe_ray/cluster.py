"""The connection to a Ray cluster for the duration of a run, and how many workers it holds."""

from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import Iterator

import ray

__all__ = ["connected", "workers_that_fit"]

_log = logging.getLogger("cafe_ray")


@contextlib.contextmanager
def connected(address: str | None) -> Iterator[None]:
    """Ray connected for the block, and left as it was found.

    A process already connected keeps its connection (and its cluster). Otherwise this connects to
    ``address`` (``None``: ``RAY_ADDRESS`` if set, else a new local cluster) and disconnects afterwards, which
    also stops a local cluster it started.
    """
    if ray.is_initialized():
        yield
        return
    ray.init(address=address, include_dashboard=False)
    _log.info("ray: connected to %s", address or os.environ.get("RAY_ADDRESS") or "a new local cluster")
    try:
        yield
    finally:
        ray.shutdown()


def workers_that_fit(num_cpus: float, num_gpus: float) -> int:
    """How many workers of this size the cluster's resources hold (at least one)."""
    resources = ray.cluster_resources()
    if num_gpus > 0:
        return max(1, math.floor(resources.get("GPU", 0) / num_gpus))
    return max(1, math.floor(resources.get("CPU", 0) / num_cpus))
