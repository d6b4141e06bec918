"""Insertion and deletion curves: batched trunk forwards against a per-step loop of full-model forwards."""

from __future__ import annotations

import pytest
import torch

from cafe_core.blanks import make_blank
from cafe_core.patches import patches_to_pixels, rank_patches
from conftest import context, synchronized


def _heatmap(setup, n):
    target, x = setup.target(n)
    return target, x, torch.rand(n, *setup.backbone.grid_size, generator=torch.Generator().manual_seed(0)).to(x)


@pytest.mark.parametrize("steps", [1, 4, 16])
@pytest.mark.parametrize("metric", ["insertion", "deletion"])
@pytest.mark.parametrize("model", ["toy", "vit_small"])
def test_curve(benchmark, host, setups, model, metric, steps):
    target, x, heatmap = _heatmap(setups[model], 4)
    evaluator = host.registry("metric").get(metric).build({"steps": steps})
    benchmark.group = f"{metric} curves: {model}, 4 curves"
    benchmark.extra_info.update(model=model, steps=steps, items=4, per="curve")
    if model == "vit_small" and steps == 1:
        benchmark.pedantic(synchronized(evaluator.evaluate), args=(target, x, heatmap, context(64)), rounds=1, iterations=1)
    else:
        benchmark(synchronized(evaluator.evaluate), target, x, heatmap, context(64))


def _per_step_full_model(setup, target, x, heatmap):
    """How metric libraries compute insertion: per step, one full-model forward of one image, the layer hooked."""
    model, (ph, pw) = setup.backbone.model, setup.backbone.patch_size
    blank = make_blank(x, "zeros")
    order = rank_patches(heatmap)
    captured = {}
    hook = model.blocks[setup.layer].register_forward_hook(lambda module, args, out: captured.update(h=out))
    values = []
    try:
        with torch.no_grad():
            for i in range(len(x)):
                mask = torch.zeros(heatmap[i].numel(), device=x.device)
                for k in range(order.shape[1] + 1):
                    if k:
                        mask[order[i, k - 1]] = 1
                    m = patches_to_pixels(mask.reshape(heatmap[i].shape), (ph, pw))
                    model(blank[i : i + 1] * (1 - m) + x[i : i + 1] * m)  # the whole model runs
                    token = captured["h"][:, int(target.positions[i])]
                    values.append(setup.sae.encode_latents(token, target.latents[i : i + 1]))
    finally:
        hook.remove()
    return values


def _bare_trunk_forwards(target, x, heatmap):
    """The same number of trunk forwards as the curves at full resolution, batched, with no masking work."""
    n_points = heatmap[0].numel() + 1
    return target.repeat_interleave(n_points).batched(x.repeat_interleave(n_points, 0), 64)


@pytest.mark.parametrize("way", ["cafe_insertion", "per_step_full_model", "bare_trunk_forwards"])
@pytest.mark.parametrize("model", ["toy", "vit_small"])
def test_insertion_against_the_usual_way(benchmark, setups, host, model, way):
    """The insertion curves of several attributors' heatmaps of one target, at full resolution."""
    setup = setups[model]
    curves = 4 if model == "toy" else 2
    one_target, one_image = setup.target(1)
    target, x = one_target.select([0] * curves), one_image.expand(curves, -1, -1, -1)
    heatmap = torch.rand(curves, *setup.backbone.grid_size, generator=torch.Generator().manual_seed(0)).to(x)
    layer = f"block {setup.layer} of {setup.backbone.depth}"
    benchmark.group = f"insertion, {model} ({layer}), {curves} curves of one target: cafe vs per-step loop vs bare"
    benchmark.extra_info.update(model=model, way=way, items=curves, per="curve")
    rounds = {"rounds": 1, "iterations": 1} if model == "vit_small" else {"rounds": 3, "iterations": 1}
    if way == "cafe_insertion":
        metric = host.registry("metric").get("insertion").build({"steps": 1})
        benchmark.pedantic(synchronized(metric.evaluate), args=(target, x, heatmap, context(64)), **rounds)
    elif way == "per_step_full_model":
        benchmark.pedantic(synchronized(_per_step_full_model), args=(setup, target, x, heatmap), **rounds)
    else:
        benchmark.pedantic(synchronized(_bare_trunk_forwards), args=(target, x, heatmap), **rounds)
