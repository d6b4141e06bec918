"""Every attributor on the same targets, end to end, and what LRP changes on a trained model."""

import pytest
import torch

import cafe_core
from cafe_core.plugins import PluginHost
from cafe_core.protocols import RunContext, TargetFunction

pytestmark = pytest.mark.slow

VIT_ATTRIBUTORS = [
    "activation_map", "gradient_x_input", "attnlrp", "cp_lrp", "integrated_gradients", "saliency",
    "input_x_gradient", "gradient_shap", "occlusion", "random",
]
CONV_ATTRIBUTORS = ["lrp_epsilon_plus_flat", "lrp_epsilon_gamma_box", "lrp_epsilon_plus", "lrp_epsilon_alpha2_beta1"]


def test_every_vit_attributor_on_one_patch_and_one_class_token_target(tmp_path):
    attributors = [{"name": name} for name in VIT_ATTRIBUTORS]
    attributors[4]["n_steps"] = 8
    attributors[7]["n_samples"] = 4
    spec = {
        "backbone": {"name": "toy_vit"},
        "sae": [{"name": "toy_sae", "layer": 3}, {"name": "toy_sae", "label": "cls_sae", "layer": 3, "tokens": "cls"}],
        "dataset": {"name": "shapes", "size": 1, "seed": 4},
        "targets": {"select": "top", "count": 1, "token": "argmax"},
        "attributors": attributors,
        "metrics": [{"name": "insertion", "steps": 4}, {"name": "deletion", "steps": 4}],
        "run": {"batch_size": 8, "device": "cpu"},
    }
    results = cafe_core.run(spec, tmp_path / "patch")
    assert len(results.rows) == 2 * len(VIT_ATTRIBUTORS) * 2  # one target per SAE
    spec["sae"] = {"name": "toy_sae", "layer": 3, "tokens": "cls"}
    spec["targets"]["token"] = "cls"
    results = cafe_core.run(spec, tmp_path / "cls")
    assert {r["position_name"] for r in results.rows} == {"cls"}
    assert {(r["attributor"], r["metric"]) for r in results.rows} == {
        (a, m) for a in VIT_ATTRIBUTORS for m in ("insertion", "deletion")
    }


def test_every_conv_attributor_runs_on_a_resnet_stage(tmp_path):
    spec = {
        "backbone": {"name": "timm_conv", "model": "resnet18", "img_size": 64,
                     "model_kwargs": {"channels": [8, 16, 24, 32], "layers": [1, 1, 1, 1]}, "patch_size": 16},
        "sae": {"name": "random", "d_in": 24, "d_sae": 48, "layer": 2},
        "dataset": {"name": "shapes", "size": 2, "image_size": 64},
        "targets": {"select": "top", "count": 1},
        "attributors": [{"name": name} for name in CONV_ATTRIBUTORS],
        "metrics": [{"name": "insertion", "steps": 4}, {"name": "deletion", "steps": 4}],
        "run": {"batch_size": 4, "device": "cpu"},
    }
    results = cafe_core.run(spec, tmp_path / "run")
    assert {r["attributor"] for r in results.rows} == set(CONV_ATTRIBUTORS)
    assert len(results.rows) == 2 * len(CONV_ATTRIBUTORS) * 2


def test_lrp_on_the_trained_default_is_more_positive_and_more_concentrated_than_gradient_x_input():
    """On a trained model LRP's relevance is mostly positive and held by few patches; gradient x input's
    carries more negative, scattered mass (the gradient's noise)."""
    from cafe_shapes import ShapesDataset

    host = PluginHost()
    backbone = host.registry("backbone").get("toy_vit").build({})
    sae = host.registry("sae").get("toy_sae").build({"layer": 3})
    images, _, _ = ShapesDataset(32, seed=9).tensors()
    x = backbone.preprocess(list(images))
    with torch.no_grad():
        codes = sae.encode(backbone.forward_to(x, 3))[:, 1:]
    best = codes.flatten(1).argmax(1)  # each image's most active (patch, latent)
    target = TargetFunction(backbone, sae, 3, best % codes.shape[-1], best // codes.shape[-1] + 1)

    def profile(name):
        heat = host.registry("attributor").get(name).build({}).attribute(target, x, RunContext(32)).heatmap
        flat = heat.flatten(1)
        positive_share = (flat.clamp_min(0).sum(1) / flat.abs().sum(1)).mean().item()
        magnitude = flat.abs().sort(1, descending=True).values
        top_share = (magnitude[:, :6].sum(1) / magnitude.sum(1)).mean().item()  # 6 of 64 patches
        return positive_share, top_share

    gxi_positive, gxi_top = profile("gradient_x_input")
    for name in ("attnlrp", "cp_lrp"):
        positive, top = profile(name)
        assert positive > gxi_positive + 0.08, (name, positive, gxi_positive)
        assert top > gxi_top, (name, top, gxi_top)
