"""cafe_core.run(spec) against a hand-written loop calling the same plugins on the same targets."""

from __future__ import annotations

import itertools
import tempfile

import pytest
import torch

import cafe_core
from cafe_core.protocols import TargetFunction
from conftest import context

SPEC = {
    "backbone": {"name": "toy_vit"},
    "sae": {"name": "toy_sae", "layer": 3},
    "dataset": {"name": "shapes", "size": 32, "seed": 4},
    "targets": {"select": "top", "count": 2},
    "attributors": [{"name": "gradient_x_input"}],
    "metrics": [{"name": "insertion", "steps": 4}],
    "run": {"batch_size": 32, "device": "cpu", "seed": 0},
}


def _hand_loop(host):
    from cafe_shapes import ShapesDataset

    backbone = host.registry("backbone").get("toy_vit").build({})
    sae = host.registry("sae").get("toy_sae").build({"layer": 3})
    attributor = host.registry("attributor").get("gradient_x_input").build({})
    metric = host.registry("metric").get("insertion").build({"steps": 4})
    dataset = ShapesDataset(32, seed=4)
    x = backbone.preprocess([item.image for item in dataset])
    with torch.no_grad():
        codes = sae.encode(backbone.forward_to(x, 3))[:, 1:]
    best, where = codes.max(1)
    latents = torch.topk(best, 2, dim=1).indices
    rows = torch.arange(32).repeat_interleave(2)
    latents = latents.reshape(-1)
    positions = where[rows, latents] + 1
    target = TargetFunction(backbone, sae, 3, latents, positions)
    scores = []
    ctx = context(32)
    for chunk in ctx.chunks(len(rows)):
        heatmap = attributor.attribute(target.select(chunk), x[rows[chunk]], ctx).heatmap
        scores.append(metric.evaluate(target.select(chunk), x[rows[chunk]], heatmap, ctx).score)
    return torch.cat(scores)


@pytest.mark.parametrize("way", ["run_spec", "hand_loop"])
def test_run_overhead(benchmark, host, way):
    benchmark.group = "run(spec) vs hand-written loop: toy, 32 images x 2 latents, gradient_x_input + insertion"
    benchmark.extra_info.update(way=way, items=64, per="target")
    if way == "hand_loop":
        benchmark.pedantic(_hand_loop, args=(host,), rounds=3, iterations=1)
        return
    counter = itertools.count()
    root = tempfile.mkdtemp(prefix="cafe-bench-")

    def fresh_directory():
        return (SPEC, f"{root}/{next(counter)}"), {"host": host, "progress": False}

    benchmark.pedantic(cafe_core.run, setup=fresh_directory, rounds=3, iterations=1)
