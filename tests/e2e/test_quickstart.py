"""The README's main job: the quickstart spec stays valid and runs on the embedded default."""

import pathlib

import pytest

import cafe_core
from cafe_core.spec import read_spec_source

pytestmark = pytest.mark.slow

QUICKSTART = pathlib.Path(__file__).resolve().parents[2] / "examples" / "quickstart.toml"


def test_quickstart_runs_on_two_images(tmp_path):
    raw, _ = read_spec_source(QUICKSTART)
    raw["dataset"]["size"] = 2
    for attributor in raw["attributors"]:
        if attributor["name"] == "integrated_gradients":
            attributor["n_steps"] = 4
    results = cafe_core.run(raw, tmp_path / "run")
    assert {r["attributor"] for r in results.rows} == {
        "activation_map", "gradient_x_input", "attnlrp", "integrated_gradients", "random"
    }
    assert {r["metric"] for r in results.rows} == {"insertion", "deletion", "object_hit", "own_patch_share"}
    assert 4 <= len(results.targets) <= 8  # two rules of two latents per image, overlaps counted once
    key = next((r["image_id"], r["layer"], r["latent"], r["position"]) for r in results.rows)
    assert results.heatmap(*key, "attnlrp").shape == (8, 8)
    assert results.curve(*key, "attnlrp", "insertion")["curve"].shape == (65,)
