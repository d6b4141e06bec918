"""On a GPU: every attributor on vit_base at batch 1, 16 and 64, insertion curves, and whole studies.

Skipped without CUDA. ``vit_base``: timm ``vit_base_patch16_224`` with random weights, a random 6,144-latent
SAE at block 6 of 12, random images at 224x224; each heatmap explains its image's most active (latent, patch
token). The studies are ``cafe_core.run`` on the quickstart's spec and on the same spec over vit_base; their
``extra_info`` holds the explanations (heatmaps with their scores) per hour.
"""

from __future__ import annotations

import time

import pytest
import torch

import cafe_core
from conftest import DEVICE, Setup, context, peak_memory, synchronized
from studies import quickstart_study

pytestmark = pytest.mark.skipif(DEVICE.type != "cuda", reason="the GPU table needs a CUDA device")

METHODS = {
    "activation_map": ("activation_map", {}),
    "gradient_x_input": ("gradient_x_input", {}),
    "attnlrp": ("attnlrp", {}),
    "cp_lrp": ("cp_lrp", {}),
    "saliency": ("saliency", {}),
    "input_x_gradient": ("input_x_gradient", {}),
    "integrated_gradients_32": ("integrated_gradients", {"n_steps": 32}),
    "gradient_shap_16": ("gradient_shap", {"n_samples": 16}),
    "occlusion": ("occlusion", {}),
}


@pytest.fixture(scope="module")
def vit_base(host) -> Setup:
    torch.manual_seed(0)
    backbone = host.registry("backbone").get("timm").build({"model": "vit_base_patch16_224"})
    sae = host.registry("sae").get("random").build({"d_in": 768, "d_sae": 6144, "layer": 6, "seed": 0})
    images = torch.randn(64, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    return Setup("vit_base", backbone.to(device=DEVICE), sae.to(device=DEVICE), 6, images.to(DEVICE))


@pytest.mark.parametrize("batch", [1, 16, 64])
@pytest.mark.parametrize("method", list(METHODS))
def test_attributor_vit_base(benchmark, host, vit_base, method, batch):
    name, params = METHODS[method]
    attribute = synchronized(host.registry("attributor").get(name).build(params).attribute)
    target, x = vit_base.target(batch)
    ctx = context(64)
    attribute(target, x, ctx)  # warm-up: kernels chosen, allocator grown
    benchmark.group = f"GPU attributors vit_base batch {batch}"
    benchmark.extra_info.update(model="vit_base", batch=batch, method=method, per="heatmap", items=batch)
    benchmark.extra_info["peak_bytes"] = peak_memory(lambda: attribute(target, x, ctx))
    benchmark.pedantic(attribute, args=(target, x, ctx), rounds=3, iterations=1)


@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("metric", ["insertion", "deletion"])
def test_curves_vit_base(benchmark, host, vit_base, metric, steps):
    target, x = vit_base.target(16)
    heatmap = torch.rand(16, *vit_base.backbone.grid_size, generator=torch.Generator().manual_seed(0)).to(x)
    evaluate = synchronized(host.registry("metric").get(metric).build({"steps": steps}).evaluate)
    ctx = context(256)
    evaluate(target, x, heatmap, ctx)
    benchmark.group = f"GPU {metric} curves vit_base, 16 curves"
    benchmark.extra_info.update(model="vit_base", steps=steps, per="curve", items=16)
    benchmark.extra_info["peak_bytes"] = peak_memory(lambda: evaluate(target, x, heatmap, ctx))
    benchmark.pedantic(evaluate, args=(target, x, heatmap, ctx), rounds=3, iterations=1)


@pytest.mark.parametrize("study", ["quickstart", "quickstart_on_vit_base"])
def test_study(benchmark, tmp_path, study):
    spec = quickstart_study("toy" if study == "quickstart" else "vit_base", str(DEVICE))
    runs = iter(range(100))

    def one_run():
        start = time.perf_counter()
        results = cafe_core.run(spec, tmp_path / str(next(runs)), progress=False)
        return results, time.perf_counter() - start

    results, seconds = benchmark.pedantic(one_run, rounds=1, iterations=1)
    heatmaps = len(results.heatmap_index)
    benchmark.group = "GPU studies"
    benchmark.extra_info.update(study=study, per="explanation", items=heatmaps, heatmaps=heatmaps,
                                explanations_per_hour=heatmaps / seconds * 3600)
