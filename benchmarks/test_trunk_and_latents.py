"""Only blocks 0..L run; many latents of one image batched against one call each."""

from __future__ import annotations

import pytest
import torch

from cafe_core.protocols import TargetFunction
from conftest import context


@pytest.mark.parametrize("layer", [1, 5, 11])
def test_gradient_x_input_by_layer(benchmark, host, setups, layer):
    """vit_small has 12 blocks: the cost should grow about as (layer + 1) / 12 of a full-depth attribution."""
    setup = setups["vit_small"]
    sae = host.registry("sae").get("random").build({"d_in": 384, "d_sae": 3072, "layer": layer})
    x = setup.images[:4]
    target = TargetFunction(setup.backbone, sae, layer, [0, 1, 2, 3], [1, 1, 1, 1])
    attributor = host.registry("attributor").get("gradient_x_input").build({})
    benchmark.group = "trunk depth: vit_small gradient_x_input, 4 images"
    benchmark.extra_info.update(layer=layer, depth=setup.backbone.depth, items=4, per="heatmap")
    benchmark(attributor.attribute, target, x, context(16))


def _latents_of_one_image(setup, k):
    x = setup.images[:1]
    with torch.no_grad():
        codes = setup.sae.encode(setup.backbone.forward_to(x, setup.layer))[0, len(setup.backbone.prefix_tokens) :]
    best, position = codes.max(0)
    latents = torch.topk(best, k).indices
    positions = position[latents] + len(setup.backbone.prefix_tokens)
    return TargetFunction(setup.backbone, setup.sae, setup.layer, latents, positions), x.expand(k, -1, -1, -1)


@pytest.mark.parametrize("mode", ["batched", "looped"])
@pytest.mark.parametrize("model", ["toy", "vit_small"])
def test_32_latents_of_one_image(benchmark, host, setups, model, mode):
    """K = 32 latents of one image: one call over 32 rows against 32 calls of one row."""
    target, x = _latents_of_one_image(setups[model], 32)
    attributor = host.registry("attributor").get("gradient_x_input").build({})
    ctx = context(32)
    benchmark.group = f"32 latents of one image: {model} gradient_x_input"
    benchmark.extra_info.update(model=model, mode=mode, items=32, per="heatmap")
    if mode == "batched":
        benchmark(attributor.attribute, target, x, ctx)
    else:
        benchmark(lambda: [attributor.attribute(target.select([i]), x[i : i + 1], ctx) for i in range(32)])
