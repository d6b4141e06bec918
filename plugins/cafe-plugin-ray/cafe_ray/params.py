"""Parameter model of the Ray executor."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["RayParams"]


class RayParams(BaseModel):
    """Parameters of :class:`cafe_ray.executor.RayExecutor`.

    Attributes
    ----------
    address : str, optional
        The cluster to run on: ``"auto"`` (the cluster this machine joined with ``ray start``),
        ``"HOST:6379"``, or ``"ray://HOST:10001"`` (Ray Client). ``None``: the Ray this process is already
        connected to, else the cluster named by ``RAY_ADDRESS``, else a new local cluster on this machine,
        shut down when the run ends.
    num_workers : int, optional
        Workers (Ray actors), each building the run's plan (and so loading the model) once. ``None``: as
        many as the cluster holds (its GPUs divided by ``num_gpus`` when that is set, else its CPUs divided
        by ``num_cpus``), and never more than there are units to compute.
    num_cpus : float
        CPUs each worker reserves; torch uses as many threads in it.
    num_gpus : float
        GPUs each worker reserves: ``1`` gives each worker a GPU of its own (Ray sets its
        ``CUDA_VISIBLE_DEVICES``, and ``run.device = "auto"`` picks it).
    max_retries : int
        Times a unit is sent again after the worker computing it died (killed, out of memory, its node
        lost); once more than that, the run stops with an error naming the unit.
    """

    model_config = ConfigDict(extra="forbid")

    address: str | None = None
    num_workers: int | None = Field(default=None, ge=1)
    num_cpus: float = Field(default=1.0, gt=0)
    num_gpus: float = Field(default=0.0, ge=0)
    max_retries: int = Field(default=2, ge=0)
