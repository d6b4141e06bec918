"""The concept graph: pruning keeps the stated share, relevance is passed down without loss, drawing and files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cafe_core.protocols import RunContext
from cafe_interlayer.graph import Level, build_concept_graph, keep_share
from cafe_interlayer.graph_figure import dot_source, draw_graph
from cafe_interlayer.methods import build_method
from cafe_interlayer.thumbnails import thumbnail


@pytest.mark.parametrize("share", [0.1, 0.5, 0.8, 0.95, 1.0])
def test_pruning_keeps_the_fewest_latents_holding_the_stated_share(share):
    rng = np.random.default_rng(3)
    scores = rng.normal(size=200) * rng.exponential(size=200)
    kept, capped = keep_share(scores, share)
    positive = scores[scores > 0]
    held = scores[kept].sum() / positive.sum()
    assert not capped and held >= share - 1e-12
    assert (scores[kept] > 0).all()
    # minimal: without the weakest kept latent the share is not reached
    assert scores[kept[:-1]].sum() / positive.sum() < share
    # the strongest: no left-out positive latent outscores a kept one
    left_out = np.setdiff1d(np.flatnonzero(scores > 0), kept)
    assert not len(left_out) or scores[left_out].max() <= scores[kept].min()


def test_pruning_by_hand():
    scores = np.array([0.1, -5.0, 0.4, 0.3, 0.2, 0.0])
    assert keep_share(scores, 0.7)[0].tolist() == [2, 3]          # 0.7 of 1.0 needs 0.4 + 0.3
    assert keep_share(scores, 0.71)[0].tolist() == [2, 3, 4]
    assert keep_share(scores, 1.0)[0].tolist() == [2, 3, 4, 0]
    kept, capped = keep_share(scores, 1.0, max_nodes=2)
    assert kept.tolist() == [2, 3] and capped
    assert keep_share(scores, 0.7, max_nodes=2)[1] is False
    assert keep_share(np.array([-1.0, 0.0]), 0.5)[0].tolist() == []
    assert keep_share(np.array([0.5, 0.5, 0.5]), 0.5)[0].tolist() == [0, 1]  # ties: lower index first


@pytest.fixture(scope="module")
def toy_graph():
    from cafe_core.plugins import PluginHost
    from cafe_shapes import ShapesDataset

    host = PluginHost()
    backbone = host.registry("backbone").get("toy_vit").build({})
    backbone.model.double()
    saes = {layer: host.registry("sae").get("toy_sae").build({"layer": layer, "tokens": "patch"}).double()
            for layer in (0, 2, 3)}
    dataset = ShapesDataset(6, seed=4)
    x = backbone.preprocess([dataset[i].image for i in range(6)]).double()
    with torch.no_grad():
        codes = saes[3].encode(backbone.forward_to(x, 3)[:, 1:])
    latent = int(codes.amax((0, 1)).argmax())
    values, where = codes[:, :, latent].max(1)
    rows = torch.nonzero(values > 0).flatten()[:3]
    levels = [Level(saes[3], 3, "layer3"), Level(saes[2], 2, "layer2"), Level(saes[0], 0, "layer0")]
    context = RunContext(batch_size=16, dtype=torch.float64)
    graph = build_concept_graph(backbone, levels, latent, x[rows], (where[rows] + 1).tolist(), build_method("cp_lrp"),
                                context, share=0.6, max_nodes=None, attributor="cp_lrp")
    return graph.to_json()


def test_every_layer_of_the_graph_keeps_the_stated_share(toy_graph):
    assert [layer["label"] for layer in toy_graph["layers"]] == ["layer2", "layer0"]
    for layer in toy_graph["layers"]:
        kept = [n for n in toy_graph["nodes"] if n["label"] == layer["label"] and n["kind"] == "latent"]
        assert len(kept) == layer["kept"] > 0
        held = sum(n["relevance"] for n in kept) / layer["positive_latent_relevance"]
        assert held == pytest.approx(layer["kept_share"]) and held >= 0.6 - 1e-12


def test_cp_lrp_passes_each_parents_relevance_down_whole(toy_graph):
    assert toy_graph["nodes"][0]["relevance"] == 1.0
    for layer in toy_graph["layers"]:
        parts = (layer["latent_relevance"] + layer["error"] + layer["bias"] + layer["uncovered"] + layer["absorbed"])
        assert parts == pytest.approx(layer["parent_relevance"], rel=1e-9, abs=1e-9)
    # the first layer down explains the top latent alone: one unit of relevance per image
    assert toy_graph["layers"][0]["parent_relevance"] == 1.0


def test_edges_into_a_kept_latent_add_up_to_its_relevance(toy_graph):
    for node in toy_graph["nodes"][1:]:
        if node["kind"] != "latent":
            continue
        incoming = sum(e["weight"] for e in toy_graph["edges"] if e["target"] == node["id"])
        assert incoming == pytest.approx(node["relevance"], rel=1e-9, abs=1e-12)


def test_the_graph_is_drawn_and_written_as_dot(toy_graph, tmp_path):
    arrays = {n["id"]: thumbnail(np.full((8, 8, 3), 0.5), np.eye(2), (0, 1), (4, 4)) for n in toy_graph["nodes"]
              if n["kind"] == "latent"}
    png, engine = draw_graph(toy_graph, arrays, tmp_path / "graph.png", engine="matplotlib", title="t")
    assert engine == "matplotlib" and png.stat().st_size > 1000
    dot = (tmp_path / "graph.dot").read_text()
    assert dot == dot_source(toy_graph, {})
    for node in toy_graph["nodes"]:
        assert f'"{node["id"]}"' in dot
    assert json.loads(json.dumps(toy_graph)) == toy_graph


def test_thumbnails_dim_silent_patches_and_outline_the_fired_one():
    image = np.full((4, 4, 3), 0.8)
    out = thumbnail(image, np.array([[2.0, 0.0], [0.0, 0.0]]), (1, 1), (2, 2), scale=2)
    assert out.shape == (8, 8, 3)
    assert out[1, 1] == pytest.approx([0.8, 0.8, 0.8])        # where it fires: the image itself
    assert out[2, 5] == pytest.approx([0.2, 0.2, 0.2])        # silent: a quarter of the brightness
    assert not np.allclose(out[4, 4], 0.2)                    # the fired patch's outline


def _graph_folder(folder, graph, latent):
    """A folder as ``cafe graph`` writes it: the figure and ``graphs.json``, for one graph."""
    graph = {**graph, "top": {**graph["top"], "latent": latent}, "engine": "matplotlib",
             "figure": f"graph-layer3-{latent}.png"}
    folder.mkdir(parents=True)
    draw_graph(graph, {}, folder / graph["figure"], engine="matplotlib", title="t")
    (folder / "graphs.json").write_text(json.dumps({"images": 6, "graphs": [graph]}))
    return graph


def test_the_report_section_shows_the_graphs_of_the_run_directory_and_of_included_folders(toy_graph, tmp_path):
    from cafe_interlayer.report_section import concept_graph_section
    from cafe_report.extension import SectionContext

    run_dir, out = tmp_path / "run", tmp_path / "run" / "report"
    inside = _graph_folder(run_dir / "graphs", toy_graph, 101)
    outside = _graph_folder(tmp_path / "elsewhere", toy_graph, 202)
    section = concept_graph_section(SectionContext(run_dir, out, [tmp_path / "elsewhere"]))
    assert section.anchor == "concept-graphs"
    html = section.html
    assert html.index("<code>graphs</code>") < html.index(f"<code>{tmp_path / 'elsewhere'}</code>")
    for k, graph, folder in ((1, inside, "graphs"), (2, outside, "elsewhere")):
        copied = f"concept-graphs/{k}-{folder}/{graph['figure']}"
        assert f'src="{copied}"' in html and (out / copied).read_bytes() == (
            (run_dir / "graphs" if k == 1 else tmp_path / "elsewhere") / graph["figure"]).read_bytes()
        assert f"Latent {graph['top']['latent']} of layer3" in html
    heaviest = max(toy_graph["edges"], key=lambda e: abs(e["weight"]))
    assert f"{heaviest['weight']:+.3f}" in html

    (tmp_path / "elsewhere" / "graphs.json").unlink()
    section = concept_graph_section(SectionContext(run_dir, out, [tmp_path / "elsewhere"]))
    assert "Latent 202" not in section.html and not (out / "concept-graphs" / "2-elsewhere").exists()
    (run_dir / "graphs" / "graphs.json").unlink()
    assert concept_graph_section(SectionContext(run_dir, out, [])) is None
