"""The same study in-process and on a local Ray cluster with 1 and 2 workers: wall time, per-unit overhead.

A Ray run's wall time includes starting its workers and each worker building the plan (the model loaded once
per worker); the cluster itself is started once, before timing. The per-unit overhead of the Ray path is
each unit's round trip measured by the driver (sending the unit and what is stored for it, scheduling, the
pieces coming back and being committed) less the worker's own time computing it, over the units that were
not their worker's first; on a worker's first unit, what the round trip adds besides is the worker's start
(a new process importing torch and cafe), reported apart with the plan's build.
"""

from __future__ import annotations

import itertools
import statistics
import tempfile

import pytest

import cafe_core

SPEC = {
    "backbone": {"name": "toy_vit"},
    "sae": {"name": "toy_sae", "layer": 3},
    "dataset": {"name": "shapes", "size": 128, "seed": 4},
    "targets": {"select": "top", "count": 2},
    "attributors": [{"name": "gradient_x_input"}, {"name": "attnlrp"}],
    "metrics": [{"name": "insertion", "steps": 4}, {"name": "deletion", "steps": 4}],
    "run": {"batch_size": 32, "device": "cpu", "seed": 0},
}
UNITS = 4

WAYS = {
    "inprocess": None,
    "ray_1_worker_2_cpus": {"num_workers": 1, "num_cpus": 2},
    "ray_2_workers_1_cpu": {"num_workers": 2, "num_cpus": 1},
}


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize("way", list(WAYS))
def test_ray_executor(benchmark, host, ray_cluster, way):
    benchmark.group = (
        "run(spec) in-process vs Ray: toy, 128 images x 2 latents in 4 units of 32, "
        "gradient_x_input + attnlrp, insertion + deletion"
    )
    benchmark.extra_info.update(way=way, items=UNITS, per="unit")
    counter = itertools.count()
    root = tempfile.mkdtemp(prefix="cafe-bench-ray-")
    executors = []

    def fresh_run():
        executor = None
        if WAYS[way] is not None:
            from cafe_ray.executor import RayExecutor

            executor = RayExecutor(**WAYS[way])
            executors.append(executor)
        return (SPEC, f"{root}/{next(counter)}"), {"host": host, "progress": False, "executor": executor}

    benchmark.pedantic(cafe_core.run, setup=fresh_run, rounds=1, iterations=1)
    timings = [timing for executor in executors for timing in executor.timings]
    if timings:
        first = [t for t in timings if t.plan_seconds > 0]
        later = [t for t in timings if t.plan_seconds == 0]
        overhead = [t.round_trip_seconds - t.compute_seconds for t in later]
        benchmark.extra_info.update(
            units_timed=len(later),
            compute_per_unit_s=statistics.median(t.compute_seconds for t in later),
            overhead_per_unit_s=statistics.median(overhead),
            overhead_share=statistics.median(o / t.compute_seconds for o, t in zip(overhead, later)),
            worker_start_s=statistics.median(t.round_trip_seconds - t.compute_seconds - t.plan_seconds for t in first),
            plan_build_s=statistics.median(t.plan_seconds for t in first),
        )
