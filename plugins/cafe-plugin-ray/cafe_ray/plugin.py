"""Registration of the Ray executor (imports nothing heavy: Ray loads when a run uses the executor)."""

from __future__ import annotations

from cafe_core import hookimpl

from .params import RayParams


@hookimpl
def cafe_register_executors(register):
    """Register ``ray``."""
    register(
        "ray",
        "cafe_ray.executor:RayExecutor",
        params=RayParams,
        description="Units on the workers of a Ray cluster (a local one by default), one plan per worker",
    )
