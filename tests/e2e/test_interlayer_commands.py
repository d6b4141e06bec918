"""``cafe graph`` and ``cafe interlayer`` end to end on cafe's default model (small settings)."""

from __future__ import annotations

import csv
import json

import pytest

from cafe_core.cli import main

SPEC = """
[backbone]
name = "toy_vit"

[[sae]]
name = "toy_sae"
label = "layer0"
layer = 0

[[sae]]
name = "toy_sae"
label = "layer2"
layer = 2

[[sae]]
name = "toy_sae"
label = "layer3"
layer = 3

[[sae]]
name = "toy_sae"
label = "cls3"
layer = 3
tokens = "cls"

[dataset]
name = "shapes"
size = 40
seed = 4

[[targets]]
select = "top"
count = 1

[[attributors]]
name = "integrated_gradients"
n_steps = 2

[[attributors]]
name = "cp_lrp"

[interlayer]
points = 5
share = 0.5
max_nodes = 4

[run]
batch_size = 32
"""


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(SPEC)
    return path


@pytest.mark.filterwarnings("ignore:cafe plugin:RuntimeWarning")
def test_the_commands_come_from_the_installed_plugin():
    from cafe_core.plugins import PluginHost

    registry = PluginHost().registry("command")
    assert registry.get("graph").plugin == registry.get("interlayer").plugin == "interlayer"


@pytest.mark.slow
def test_faithfulness_scores_every_target_source_and_attributor(spec, tmp_path, capsys):
    out = tmp_path / "faithful"
    assert main(["interlayer", "faithfulness", str(spec), "--images", "2", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "insertion ↑" in printed and "integrated_gradients" in printed and "cp_lrp" in printed
    result = json.loads((out / "interlayer.json").read_text())
    assert result["settings"]["targets"] == 2 and result["settings"]["points"] == 5
    assert len(result["rows"]) == 2 * 2 * 2  # targets x sources (layer2, layer0) x attributors
    for row in result["rows"]:
        assert 0 <= row["insertion"] <= 1 and 0 <= row["deletion"] <= 1
        assert row["top_pairs"] and row["top_latents"]
        if row["attributor"] == "cp_lrp":
            assert abs(row["conservation_error"]) < 1e-3 * max(1.0, row["activation"])
    with open(out / "interlayer.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 8
    assert (out / "curves.png").stat().st_size > 1000 and (out / "index.html").exists()


@pytest.mark.slow
def test_graph_writes_json_dot_png_and_a_page(spec, tmp_path):
    out = tmp_path / "graph"
    code = main(["graph", str(spec), "--count", "1", "--images", "20", "--images-per-latent", "2",
                 "--attributor", "cp_lrp", "--engine", "matplotlib", "--out", str(out), "--no-progress"])
    assert code == 0
    graphs = json.loads((out / "graphs.json").read_text())["graphs"]
    assert len(graphs) == 1
    graph = graphs[0]
    assert graph["attributor"] == "cp_lrp" and graph["share"] == 0.5
    assert len(graph["top"]["images"]) == 2
    assert [layer["label"] for layer in graph["layers"]] == ["layer2", "layer0"]
    for layer in graph["layers"]:
        assert layer["capped"] or layer["kept_share"] >= 0.5
        assert layer["kept"] <= 4
    stem = f"graph-layer3-{graph['top']['latent']}"
    for suffix in (".json", ".dot", ".png"):
        assert (out / f"{stem}{suffix}").exists()
    for node in graph["nodes"]:
        if node["kind"] == "latent":
            assert (out / node["thumbnail"]).exists()
    assert stem in (out / "index.html").read_text()


@pytest.mark.slow
def test_objects_checks_the_graphs_of_label_predicting_class_token_latents(spec, tmp_path, capsys):
    out = tmp_path / "objects"
    code = main(["interlayer", "objects", str(spec), "--target", "cls3", "--source", "layer0", "--attributors",
                 "gradient_x_input", "--images", "40", "--auroc", "0.9", "--per-latent", "1", "--out", str(out),
                 "--no-progress"])
    assert code == 0
    result = json.loads((out / "objects.json").read_text())
    assert result["predictive"], "some class-token latent predicts a label bit"
    assert len(result["targets"]) == len(result["predictive"])
    for row in result["targets"]:
        assert row["source"] == "layer0" and row["attributor"] == "gradient_x_input"
        assert 0 <= row["chance_reach"] <= 1 and row["kept"] <= 4
    assert "reached" in capsys.readouterr().out


@pytest.mark.slow
def test_objects_needs_a_class_token_target(spec, tmp_path, capsys):
    assert main(["interlayer", "objects", str(spec), "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    assert "class-token SAE" in capsys.readouterr().err
