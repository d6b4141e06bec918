"""Insertion and deletion curves: batched trunk forwards against a per-step loop of full-model forwards."""

from __future__ import annotations

import pytest
import torch

from cafe_core.blanks import make_blank
from cafe_core.patches import patches_to_pixels, rank_patches
from conftest import context


def _heatmap(setup, n):
    target, x = setup.target(n)
    return target, x, torch.rand(n, *setup.backbone.grid_size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("steps", [1, 4, 16])
@pytest.mark.parametrize("metric", ["insertion", "deletion"])
@pytest.mark.parametrize("model", ["toy", "vit_small"])
def test_curve(benchmark, host, setups, model, metric, steps):
    target, x, heatmap = _heatmap(setups[model], 4)
    evaluator = host.registry("metric").get(metric).build({"steps": steps})
    benchmark.group = f"{metric} curves: {model}, 4 curves"
    benchmark.extra_info.update(model=model, steps=steps, items=4, per="curve")
    if model == "vit_small" and steps == 1:
        benchmark.pedantic(evaluator.evaluate, args=(target, x, heatmap, context(64)), rounds=1, iterations=1)
    else:
        benchmark(evaluator.evaluate, target, x, heatmap, context(64))


def _per_step_full_model(setup, target, x, heatmap):
    """How metric libraries compute an insertion curve: one full-model forward per step, one image at a time."""
    model, (ph, pw) = setup.backbone.model, setup.backbone.patch_size
    blank = make_blank(x, "zeros")
    order = rank_patches(heatmap)
    values = []
    with torch.no_grad():
        for i in range(len(x)):
            mask = torch.zeros(heatmap[i].numel())
            for k in range(order.shape[1] + 1):
                if k:
                    mask[order[i, k - 1]] = 1
                m = patches_to_pixels(mask.reshape(heatmap[i].shape), (ph, pw))
                composite = blank[i] * (1 - m) + x[i] * m
                features = model.forward_features(composite[None])  # the whole model runs
                values.append(features[0, int(target.positions[i])].sum())
    return values


def _bare_trunk_forwards(setup, target, x, heatmap):
    """The same number of trunk forwards as a full-resolution curve, batched, with no masking work."""
    n_points = heatmap[0].numel() + 1
    repeated = x.repeat_interleave(n_points, 0)
    rows = target.repeat_interleave(n_points)
    return rows.batched(repeated, 64)


@pytest.mark.parametrize("way", ["cafe_insertion", "per_step_full_model", "bare_trunk_forwards"])
def test_insertion_against_the_usual_way(benchmark, host, setups, way):
    setup = setups["toy"]
    target, x, heatmap = _heatmap(setup, 4)
    benchmark.group = "insertion, toy, 4 curves at full resolution: cafe vs per-step loop vs bare forwards"
    benchmark.extra_info.update(way=way, items=4, per="curve")
    if way == "cafe_insertion":
        metric = host.registry("metric").get("insertion").build({"steps": 1})
        benchmark(metric.evaluate, target, x, heatmap, context(64))
    elif way == "per_step_full_model":
        benchmark.pedantic(_per_step_full_model, args=(setup, target, x, heatmap), rounds=3, iterations=1)
    else:
        benchmark(_bare_trunk_forwards, setup, target, x, heatmap)
