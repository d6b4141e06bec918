"""Only blocks 0..L run; many latents of one image batched against one call each."""

from __future__ import annotations

import pytest
import torch

from cafe_core.protocols import TargetFunction
from conftest import DEVICE, context, synchronized


@pytest.mark.parametrize("layer", [1, 5, 11])
def test_gradient_x_input_by_layer(benchmark, host, setups, layer):
    """vit_small has 12 blocks: the cost should grow about as (layer + 1) / 12 of a full-depth attribution."""
    setup = setups["vit_small"]
    sae = host.registry("sae").get("random").build({"d_in": 384, "d_sae": 3072, "layer": layer}).to(device=DEVICE)
    x = setup.images[:4]
    target = TargetFunction(setup.backbone, sae, layer, [0, 1, 2, 3], [1, 1, 1, 1])
    attributor = host.registry("attributor").get("gradient_x_input").build({})
    benchmark.group = "trunk depth: vit_small gradient_x_input, 4 images"
    benchmark.extra_info.update(layer=layer, depth=setup.backbone.depth, items=4, per="heatmap")
    benchmark(synchronized(attributor.attribute), target, x, context(16))


def _top_latents(setup, n_images, per_image):
    """Each of the first images at its ``per_image`` latents with the highest maximum over patch tokens.

    Returns the target function and the images repeated once per row, each latent read at its top token.
    """
    x = setup.images[:n_images]
    n_prefix = len(setup.backbone.prefix_tokens)
    with torch.no_grad():
        best, position = setup.sae.encode(setup.backbone.forward_to(x, setup.layer))[:, n_prefix:].max(1)
    latents = torch.topk(best, per_image, dim=1).indices
    positions = torch.gather(position, 1, latents) + n_prefix
    target = TargetFunction(setup.backbone, setup.sae, setup.layer, latents.flatten(), positions.flatten())
    return target, x.repeat_interleave(per_image, 0)


@pytest.mark.parametrize("mode", ["looped", "rows", "shared"])
@pytest.mark.parametrize("method", ["gradient_x_input", "attnlrp"])
@pytest.mark.parametrize("model", ["toy", "vit_small"])
def test_32_latents_of_one_image(benchmark, host, setups, model, method, mode):
    """K = 32 latents of one image: 32 calls of one row, or one call over 32 rows batched two ways."""
    target, x = _top_latents(setups[model], 1, 32)
    ctx = context(32)
    benchmark.group = f"32 latents of one image: {model} {method}"
    benchmark.extra_info.update(model=model, mode=mode, items=32, per="heatmap")
    if mode == "looped":
        attributor = host.registry("attributor").get(method).build({})
        benchmark(synchronized(lambda: [attributor.attribute(target.select([i]), x[i : i + 1], ctx) for i in range(32)]))
    else:
        attributor = host.registry("attributor").get(method).build({"batching": mode})
        benchmark(synchronized(attributor.attribute), target, x, ctx)


PATH_PARAMS = {
    "integrated_gradients_blank": ("integrated_gradients", {"n_steps": 16, "start": "blank"}),
    "integrated_gradients_onset": ("integrated_gradients", {"n_steps": 16}),
    "gradient_shap": ("gradient_shap", {"n_samples": 16}),
}
"""The path methods' variants: a registered name and its params."""


@pytest.mark.parametrize("mode", ["looped", "one call"])
@pytest.mark.parametrize("model", ["toy", "vit_small"])
@pytest.mark.parametrize(
    "method",
    ["occlusion", "saliency", "input_x_gradient", "integrated_gradients_blank", "integrated_gradients_onset",
     "gradient_shap"],
)
def test_32_latents_of_one_image_other_methods(benchmark, host, setups, model, method, mode):
    """K = 32 latents of one image for the methods whose one call shares its forwards: 32 calls or one."""
    target, x = _top_latents(setups[model], 1, 32)
    ctx = context(32)
    name, params = PATH_PARAMS.get(method, (method, {}))
    attributor = host.registry("attributor").get(name).build(params)
    benchmark.group = f"32 latents of one image: {model} {method}"
    benchmark.extra_info.update(model=model, mode=mode, items=32, per="heatmap")
    if mode == "looped":
        benchmark(synchronized(lambda: [attributor.attribute(target.select([i]), x[i : i + 1], ctx) for i in range(32)]))
    else:
        benchmark(synchronized(attributor.attribute), target, x, ctx)


@pytest.mark.parametrize("mode", ["rows", "shared"])
@pytest.mark.parametrize("per_image", [2, 8, 16])
@pytest.mark.parametrize("model", ["toy", "vit_small"])
def test_latents_per_image(benchmark, host, setups, model, per_image, mode):
    """16 rows made of 16 / per_image images, each explained at its per_image most active latents."""
    target, x = _top_latents(setups[model], 16 // per_image, per_image)
    attributor = host.registry("attributor").get("gradient_x_input").build({"batching": mode})
    benchmark.group = f"latents per image: {model} gradient_x_input, 16 rows, {per_image:02d} per image"
    benchmark.extra_info.update(model=model, mode=mode, items=16, per="heatmap")
    benchmark(synchronized(attributor.attribute), target, x, context(16))


@pytest.fixture(scope="module")
def dense_token(host, setups):
    """The toy model's class token under a random 2,048-latent SAE: about 1,000 latents active at once."""
    setup = setups["toy"]
    sae = host.registry("sae").get("random").build({"d_in": 128, "d_sae": 2048, "layer": 3, "seed": 0}).to(device=DEVICE)
    x = setup.images[:1]
    with torch.no_grad():
        codes = sae.encode(setup.backbone.forward_to(x, 3))[0, 0]
    return setup.backbone, sae, x, torch.argsort(codes, descending=True)


@pytest.mark.parametrize("mode", ["shared", "jacobian"])
@pytest.mark.parametrize("k", [32, 64, 128, 256, 512])
def test_jacobian_crossover(benchmark, host, dense_token, k, mode):
    """K latents at one token of width D = 128: K vector-Jacobian products against D and a matrix product."""
    backbone, sae, x, ranked = dense_token
    target = TargetFunction(backbone, sae, 3, ranked[:k], [0] * k)
    attributor = host.registry("attributor").get("gradient_x_input").build({"batching": mode})
    benchmark.group = f"K latents at one token (D = 128), toy gradient_x_input: K = {k:03d}"
    benchmark.extra_info.update(mode=mode, k=k, items=k, per="heatmap")
    benchmark(synchronized(attributor.attribute), target, x.expand(k, -1, -1, -1), context(32))
