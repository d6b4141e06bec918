"""End to end: a spec through resolution, attribution, metrics, the store, and back as Results."""

import copy
import json

import numpy as np
import pytest
import torch

import cafe_core
from cafe_core.component_errors import ComponentError
from cafe_core.errors import SpecError
from cafe_core.plugins import PluginHost
from cafe_core.store import RunDirectoryError

pytestmark = pytest.mark.slow


def test_run_writes_the_tidy_table_and_run_directory(spec_dict, tmp_path):
    results = cafe_core.run(spec_dict, tmp_path / "run")
    explained = [t for t in results.targets if t["status"] == "explained"]
    assert len(explained) == 5 * 2  # five images, the two most active latents each
    assert len(results.rows) == len(explained) * 2 * 2  # two attributors x two metrics
    assert {r["attributor"] for r in results.rows} == {"activation_map", "gradient_x_input"}
    for name in ("run.db", "spec.json", "versions.json", "results.csv"):
        assert (tmp_path / "run" / name).is_file()
    versions = json.loads((tmp_path / "run" / "versions.json").read_text())
    assert versions["plugins"]["timm"]["distribution"] == "cafe-plugin-timm"
    assert {"baselines", "faithfulness", "sae", "datasets"} <= set(versions["plugins"])
    insertion = [r["score"] for r in results.rows if r["metric"] == "insertion"]
    assert all(0.0 <= s <= 1.0 for s in insertion)  # clipped curves on [0, 1]
    summary = {(s["attributor"], s["metric"]): s for s in results.summary()}
    assert summary[("gradient_x_input", "insertion")]["n"] == 10
    assert summary[("gradient_x_input", "deletion")]["higher_is_better"] is False


def test_top_selection_and_argmax_position_match_an_independent_forward(spec_dict, tmp_path, assets):
    import timm
    from cafe_sae import load
    from safetensors.torch import load_file

    results = cafe_core.run(spec_dict, tmp_path / "run")
    host = PluginHost()
    backbone = host.registry("backbone").get("timm").build(
        {k: v for k, v in spec_dict["backbone"].items() if k != "name"}
    )
    dataset = host.registry("dataset").get("folder").build({"path": spec_dict["dataset"]["path"]})
    item = dataset[1]
    x = backbone.preprocess([item.image])
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3, embed_dim=32, num_heads=2)
    model.load_state_dict(load_file(str(assets / "vit.safetensors")))
    model.eval()
    captured = {}
    model.blocks[1].register_forward_hook(lambda m, i, o: captured.setdefault("h", o))
    with torch.no_grad():
        model(x)
    sae = load(assets / "sae.safetensors")
    with torch.no_grad():
        z = torch.relu((captured["h"][0, 1:] - sae.b_d) @ sae.W_e.T + sae.b_e)  # [patches, d_sae]
    best, where = z.max(dim=0)
    top2 = torch.topk(best, 2).indices.tolist()
    mine = sorted((t["latent"], t["position"]) for t in results.targets if t["image_id"] == item.image_id)
    assert mine == sorted((n, int(where[n]) + 1) for n in top2)
    for t in results.targets:
        if t["image_id"] == item.image_id:
            assert t["activation"] == pytest.approx(float(best[t["latent"]]), rel=1e-5)


def test_stored_heatmap_equals_an_independent_gradient_times_input(spec_dict, tmp_path, assets):
    from cafe_core.protocols import TargetFunction

    results = cafe_core.run(spec_dict, tmp_path / "run")
    row = next(t for t in results.targets if t["status"] == "explained")
    host = PluginHost()
    backbone = host.registry("backbone").get("timm").build(
        {k: v for k, v in spec_dict["backbone"].items() if k != "name"}
    )
    sae = host.registry("sae").get("relu").build({"path": str(assets / "sae.safetensors")})
    dataset = host.registry("dataset").get("folder").build({"path": spec_dict["dataset"]["path"]})
    image = next(item.image for item in dataset if item.image_id == row["image_id"])
    x = backbone.preprocess([image]).requires_grad_(True)
    z = TargetFunction(backbone, sae, 1, [row["latent"]], [row["position"]])(x)
    (grad,) = torch.autograd.grad(z.sum(), x)
    expected = (x * grad).sum(1)[0].reshape(4, 8, 4, 8).sum((1, 3)).detach().numpy()
    stored = results.heatmap(row["image_id"], 1, row["latent"], row["position"], "gradient_x_input")
    np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-6)


class Interrupt(Exception):
    pass


def counting_plugin(calls, fail_on_call=None):
    """A plugin whose attributor delegates to gradient_x_input, counting rows and failing on demand."""
    from types import SimpleNamespace

    from cafe_core import hookimpl
    from cafe_baselines.gradient_x_input import GradientXInput

    class Counting(GradientXInput):
        def attribute(self, target, x, context):
            calls.append(len(x))
            if fail_on_call is not None and len(calls) == fail_on_call:
                raise Interrupt("killed")
            return super().attribute(target, x, context)

    @hookimpl
    def cafe_register_attributors(register):
        register("counting", Counting)

    return SimpleNamespace(cafe_register_attributors=cafe_register_attributors)


def test_an_interrupted_run_resumes_computing_only_what_is_missing(spec_dict, tmp_path):
    spec_dict["attributors"] = [{"name": "counting"}]
    first_calls, second_calls = [], []
    host = PluginHost()
    host.add(counting_plugin(first_calls, fail_on_call=3), "counting")
    with pytest.raises(ComponentError, match="attributor 'counting' failed") as caught:
        cafe_core.run(spec_dict, tmp_path / "run", host=host)
    assert isinstance(caught.value.__cause__, Interrupt)
    partial = cafe_core.Results.load(tmp_path / "run")
    assert len(partial.rows) == 2 * 2 * 2  # the first unit (2 images x 2 latents) x 2 metrics survived

    host = PluginHost()
    host.add(counting_plugin(second_calls), "counting")
    resumed = cafe_core.run(spec_dict, tmp_path / "run", host=host)
    assert sum(second_calls) == 10 - 4  # only the six rows not stored
    host = PluginHost()
    host.add(counting_plugin([]), "counting")
    fresh = cafe_core.run(spec_dict, tmp_path / "fresh", host=host)
    key = lambda r: (r["image_id"], r["latent"], r["metric"])  # noqa: E731
    assert sorted(map(key, resumed.rows)) == sorted(map(key, fresh.rows))
    for a, b in zip(sorted(resumed.rows, key=key), sorted(fresh.rows, key=key)):
        assert a["score"] == pytest.approx(b["score"], rel=1e-6)


def test_each_metric_scores_the_heatmaps_of_every_attributor_in_one_call_per_chunk(spec_dict, tmp_path):
    from types import SimpleNamespace

    from cafe_core import hookimpl
    from cafe_core.protocols import RunContext, TargetFunction
    from cafe_faithfulness.curves import Insertion

    calls = []

    class CountingInsertion(Insertion):
        def __init__(self):
            super().__init__(steps=2)

        def evaluate(self, target, x, heatmap, context, annotations=None):
            calls.append(len(x))
            return super().evaluate(target, x, heatmap, context, annotations)

    @hookimpl
    def cafe_register_metrics(register):
        register("counting_insertion", CountingInsertion)

    host = PluginHost()
    host.add(SimpleNamespace(cafe_register_metrics=cafe_register_metrics), "counting")
    spec_dict["metrics"] = [{"name": "counting_insertion"}]
    results = cafe_core.run(spec_dict, tmp_path / "run", host=host)
    # 5 images x 2 latents in chunks of batch_size = 2 targets, each scored for both attributors at once.
    assert calls == [2 * 2] * 5

    backbone_params = {k: v for k, v in spec_dict["backbone"].items() if k != "name"}
    backbone = host.registry("backbone").get("timm").build(backbone_params)
    sae = host.registry("sae").get("relu").build({"path": spec_dict["sae"]["path"]})
    folder = host.registry("dataset").get("folder").build({"path": spec_dict["dataset"]["path"]})
    dataset = {item.image_id: item.image for item in folder}

    for row in results.rows:  # each score equals the metric on that heatmap alone
        x = backbone.preprocess([dataset[row["image_id"]]])
        target = TargetFunction(backbone, sae, 1, [row["latent"]], [row["position"]])
        stored = results.heatmap(row["image_id"], row["layer"], row["latent"], row["position"], row["attributor"])
        heatmap = torch.as_tensor(stored)[None]
        alone = Insertion(steps=2).evaluate(target, x, heatmap.to(x), RunContext())
        assert row["score"] == pytest.approx(float(alone.score[0]), rel=1e-5, abs=1e-6)


def test_rerunning_a_finished_run_computes_nothing(spec_dict, tmp_path):
    spec_dict["attributors"] = [{"name": "counting"}]
    calls = []
    host = PluginHost()
    host.add(counting_plugin(calls), "counting")
    cafe_core.run(spec_dict, tmp_path / "run", host=host)
    calls.clear()
    cafe_core.run(spec_dict, tmp_path / "run", host=host)
    assert calls == []


def test_a_different_spec_cannot_reuse_a_run_directory(spec_dict, tmp_path):
    cafe_core.run(spec_dict, tmp_path / "run")
    changed = copy.deepcopy(spec_dict)
    changed["metrics"] = [{"name": "insertion"}]
    with pytest.raises(RunDirectoryError, match="sections that differ: metrics"):
        cafe_core.run(changed, tmp_path / "run")
    changed = copy.deepcopy(spec_dict)
    changed["run"]["batch_size"] = 3  # execution-only settings may change on resume
    cafe_core.run(changed, tmp_path / "run")


def test_a_float64_run_stores_float64_curves(spec_dict, tmp_path):
    spec_dict["run"]["dtype"] = "float64"
    results = cafe_core.run(spec_dict, tmp_path / "run")
    row = next(r for r in results.rows if r["metric"] == "insertion")
    curve = results.curve(row["image_id"], row["layer"], row["latent"], row["position"], row["attributor"], "insertion")
    assert curve["curve"].dtype == curve["raw_curve"].dtype == curve["fractions"].dtype == np.float64
    assert curve["raw_curve"][-1] == 1.0  # the full image over itself


def test_explicit_latents_at_the_class_token_record_inactive_targets(spec_dict, tmp_path):
    spec_dict["targets"] = {"latents": [0, 5, 17], "token": "cls"}
    results = cafe_core.run(spec_dict, tmp_path / "run")
    assert len(results.targets) == 5 * 3
    assert {t["position"] for t in results.targets} == {0}
    assert {t["position_name"] for t in results.targets} == {"cls"}
    explained = sum(t["status"] == "explained" for t in results.targets)
    assert len(results.rows) == explained * 4
    for t in results.targets:
        assert (t["status"] == "explained") == (t["activation"] > 0)


def test_semantic_errors_are_reported_together_with_their_paths(spec_dict):
    spec_dict["sae"]["layer"] = 7
    spec_dict["dataset"]["path"] = spec_dict["dataset"]["path"] + "-missing"
    with pytest.raises(SpecError) as info:
        cafe_core.run(spec_dict)
    assert [p for p, _ in info.value.problems] == ["dataset.path", "sae"]
    assert "trained on layer 1" in str(info.value)
    spec_dict["sae"].pop("layer")
    spec_dict["dataset"]["path"] = spec_dict["dataset"]["path"].removesuffix("-missing")
    spec_dict["targets"] = {"latents": [3, 500], "token": "reg0"}
    with pytest.raises(SpecError) as info:
        cafe_core.run(spec_dict)
    paths = [p for p, _ in info.value.problems]
    assert paths == ["targets.latents", "targets.token"]
    assert "latents [500] do not exist in an SAE of 96 latents" in str(info.value)
    assert "no 'reg0' token; use one of 'argmax', 'cls'" in str(info.value)


def test_layer_past_the_depth_names_the_valid_range(spec_dict, assets, tmp_path):
    from cafe_sae import ReluSAE, save

    save(ReluSAE.random_init(32, 96, seed=1, layer=5), tmp_path / "deep.safetensors")
    spec_dict["sae"] = {"name": "relu", "path": str(tmp_path / "deep.safetensors")}
    with pytest.raises(SpecError, match=r"sae.layer: layer 5 is past the backbone's 3 blocks \(valid: 0..2"):
        cafe_core.run(spec_dict)


def test_sae_of_another_width_is_rejected(spec_dict, tmp_path):
    from cafe_sae import ReluSAE, save

    save(ReluSAE.random_init(48, 96, seed=1, layer=1), tmp_path / "wide.safetensors")
    spec_dict["sae"] = {"name": "relu", "path": str(tmp_path / "wide.safetensors")}
    with pytest.raises(SpecError, match="reads 48-dim hidden states but the backbone's tokens are 32-dim"):
        cafe_core.run(spec_dict)


def test_several_target_rules_are_united_without_duplicates(spec_dict, tmp_path):
    spec_dict["targets"] = [
        {"select": "top", "count": 2},
        {"select": "top", "count": 3},  # overlaps the first rule on its two latents
        {"latents": [7], "token": "cls"},
    ]
    spec_dict["attributors"] = [{"name": "activation_map"}]
    results = cafe_core.run(spec_dict, tmp_path / "run")
    per_image = {}
    for t in results.targets:
        per_image.setdefault(t["image_id"], []).append((t["latent"], t["position"]))
    for targets in per_image.values():
        assert len(targets) == len(set(targets)) == 3 + 1
        assert (7, 0) in targets


def test_an_optional_component_that_is_not_installed_is_skipped(spec_dict, tmp_path):
    spec_dict["attributors"].append({"name": "not_installed_method", "optional": True})
    with pytest.warns(RuntimeWarning, match="skipping optional attributor 'not_installed_method'"):
        results = cafe_core.run(spec_dict, tmp_path / "run")
    assert {r["attributor"] for r in results.rows} == {"activation_map", "gradient_x_input"}
    spec_dict["attributors"][-1]["optional"] = False
    with pytest.raises(SpecError, match="unknown attributor 'not_installed_method'"):
        cafe_core.run(spec_dict, tmp_path / "other")
