"""Time per heatmap of every attributor, at batch 1 and 16, on the default model and on vit_small at 224.

Each group (model, batch) holds all methods side by side; ``report.py`` divides each by gradient_x_input
of the same group, measured in the same run.
"""

from __future__ import annotations

import pytest

from conftest import context, peak_memory, synchronized

METHODS = {
    "activation_map": ("activation_map", {}),
    "gradient_x_input": ("gradient_x_input", {}),
    "attnlrp": ("attnlrp", {}),
    "cp_lrp": ("cp_lrp", {}),
    "integrated_gradients_16": ("integrated_gradients", {"n_steps": 16}),
    "integrated_gradients_32": ("integrated_gradients", {"n_steps": 32}),
    "occlusion": ("occlusion", {}),
}


@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("model", ["toy", "vit_small"])
@pytest.mark.parametrize("method", list(METHODS))
def test_attributor(benchmark, host, setups, model, batch, method):
    name, params = METHODS[method]
    attributor = host.registry("attributor").get(name).build(params)
    attribute = synchronized(attributor.attribute)
    target, x = setups[model].target(batch)
    ctx = context(16)
    benchmark.group = f"attributors {model} batch {batch}"
    benchmark.extra_info.update(model=model, batch=batch, method=method, per="heatmap", items=batch)
    heavy = model == "vit_small" and method in ("occlusion", "integrated_gradients_16", "integrated_gradients_32")
    if heavy:  # one timed round, its peak memory sampled during it
        def measured():
            benchmark.extra_info["peak_bytes"] = peak_memory(lambda: attribute(target, x, ctx))

        benchmark.pedantic(measured, rounds=1, iterations=1)
    else:
        benchmark.extra_info["peak_bytes"] = peak_memory(lambda: attribute(target, x, ctx))
        benchmark(attribute, target, x, ctx)
