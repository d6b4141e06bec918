"""The documentation's code runs, and every hook is documented and exercised."""

import pathlib
import re

import torch

import cafe_core.hookspecs as hookspecs

ROOT = pathlib.Path(__file__).resolve().parents[2]


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def test_contributing_attributor_example_passes_the_conformance_kit():
    import timm

    from cafe_core.protocols import TargetFunction
    from cafe_core.testing import check_attributor
    from cafe_sae import ReluSAE

    blocks = python_blocks((ROOT / "CONTRIBUTING.md").read_text())
    method_source = next(b for b in blocks if "class SmoothGrad:" in b)
    namespace: dict = {}
    exec(compile(method_source, "CONTRIBUTING.md", "exec"), namespace)

    from cafe_timm.vit import TimmViT

    torch.manual_seed(0)
    backbone = TimmViT(
        "vit_tiny_patch16_224", img_size=32,
        model_kwargs={"patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2},
    )
    sae = ReluSAE.random_init(32, 64, seed=0, layer=1).requires_grad_(False)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        codes = sae.encode(backbone.forward_to(x, 1))
    latents = codes[:, 5].argmax(dim=-1)  # the latents most active at token 5
    target = TargetFunction(backbone, sae, 1, latents, [5, 5, 5])
    check_attributor(namespace["SmoothGrad"](n_samples=3), target, x)
    assert timm  # the example runs on a real timm model


def test_every_hook_is_documented_with_an_example_and_in_contributing():
    contributing = (ROOT / "CONTRIBUTING.md").read_text()
    hooks = [name for name in dir(hookspecs) if name.startswith("cafe_register_")]
    assert len(hooks) == 9
    for name in hooks:
        doc = getattr(hookspecs, name).__doc__
        assert doc and "Example" in doc and "register(" in doc, name
        assert f"`{name}`" in contributing, name


def test_every_hook_is_implemented_by_a_plugin_of_this_repository():
    from cafe_core.plugins import PluginHost

    host = PluginHost()
    for kind in ("backbone", "sae", "attributor", "metric", "dataset", "executor", "spec_table", "report_section"):
        assert any(r.plugin != "core" for r in host.registry(kind)), kind  # the core's own do not count
