"""A run on a conv backbone: an SAE on an inner stage, explained by zennit LRP, located on the heatmap grid."""

import pytest

import cafe_core

pytestmark = pytest.mark.slow


def test_run_on_an_inner_stage_of_a_resnet(tmp_path):
    spec = {
        "backbone": {"name": "timm_conv", "model": "resnet18", "img_size": 64,
                     "model_kwargs": {"channels": [8, 16, 24, 32], "layers": [1, 1, 1, 1]}, "patch_size": 16},
        "sae": {"name": "random", "d_in": 16, "d_sae": 64, "layer": 1},  # stage 1: 8x8 tokens of width 16
        "dataset": {"name": "shapes", "size": 3, "image_size": 64},
        "targets": {"select": "top", "count": 2},
        "attributors": [{"name": "lrp_epsilon_plus"}, {"name": "gradient_x_input"}],
        "metrics": [{"name": "own_patch_share"}, {"name": "insertion", "steps": 4}],
        "run": {"batch_size": 4, "device": "cpu"},
    }
    results = cafe_core.run(spec, tmp_path / "run")
    assert len(results.targets) == 6
    for t in results.targets:
        assert 0 <= t["position"] < 64
        row, col = map(int, t["position_name"].removeprefix("patch(").removesuffix(")").split(","))
        assert t["position"] == row * 8 + col
    for row in results.rows:
        if row["metric"] == "own_patch_share":
            assert 0.0 <= row["score"] <= 1.0
    heatmap = results.heatmap(results.targets[0]["image_id"], 1, results.targets[0]["latent"],
                              results.targets[0]["position"], "lrp_epsilon_plus")
    assert heatmap.shape == (4, 4)
