"""Drawing a concept graph with graphviz: the DOT source, the fallback without ``dot``, and the rendered SVG."""

from __future__ import annotations

import pathlib
import re
import shutil

import numpy as np
import pytest

from cafe_interlayer.errors import InterlayerError
from cafe_interlayer.graph_figure import dot_source, draw_graph
from cafe_interlayer.thumbnails import save_thumbnail

GRAPH = {
    "nodes": [
        {"id": "top:5", "kind": "latent", "layer": 3, "latent": 5, "relevance": 1.0},
        {"id": "mid:9", "kind": "latent", "layer": 2, "latent": 9, "relevance": 0.8},
        {"id": "mid:4", "kind": "latent", "layer": 2, "latent": 4, "relevance": -0.4},
        {"id": "mid:error", "kind": "error", "layer": 2, "latent": None, "relevance": 0.25},
        {"id": "low:1", "kind": "latent", "layer": 0, "latent": 1, "relevance": 0.6},
    ],
    "edges": [
        {"source": "top:5", "target": "mid:9", "weight": 0.8},
        {"source": "top:5", "target": "mid:4", "weight": -0.4},
        {"source": "top:5", "target": "mid:error", "weight": 0.25},
        {"source": "mid:9", "target": "low:1", "weight": 0.01},
    ],
    "layers": [],
}
THUMBS = {"top:5": "thumbs/top-5.png", "mid:9": "thumbs/mid-9.png", "low:1": "thumbs/low-1.png"}
# penwidth = 0.4 + 5 |w| / 0.8; the 0.01 edge is under 2% of the heaviest and is left out
WIDTHS = {("top:5", "mid:9"): 5.40, ("top:5", "mid:4"): 2.90, ("top:5", "mid:error"): 1.9625}


def _attributes(text):
    return dict(re.findall(r'(\w+)=("[^"]*"|[^,\]]+)', text))


def _parse(dot):
    nodes, edges, ranks = {}, {}, []
    for line in dot.splitlines():
        if m := re.fullmatch(r'\s*"([^"]+)" -> "([^"]+)" \[(.*)\];', line):
            edges[(m[1], m[2])] = _attributes(m[3])
        elif m := re.fullmatch(r'\s*"([^"]+)" \[(.*)\];', line):
            nodes[m[1]] = _attributes(m[2])
        elif m := re.fullmatch(r"\s*\{ rank=same; (.*) \}", line):
            ranks.append(re.findall(r'"([^"]+)"', m[1]))
    return nodes, edges, ranks


def test_the_dot_source_has_every_node_its_thumbnail_and_the_weighted_edges():
    nodes, edges, ranks = _parse(dot_source(GRAPH, THUMBS))
    assert set(nodes) == {n["id"] for n in GRAPH["nodes"]}
    assert ranks == [["top:5"], ["mid:9", "mid:4", "mid:error"], ["low:1"]]
    for node_id, path in THUMBS.items():
        assert nodes[node_id]["image"] == f'"{path}"'
    assert "image" not in nodes["mid:error"] and "dashed" in nodes["mid:error"]["style"]
    assert nodes["mid:4"]["label"] == '"L2 #4\\n-0.40"'
    assert set(edges) == set(WIDTHS)
    for key, width in WIDTHS.items():
        assert float(edges[key]["penwidth"]) == pytest.approx(width, abs=0.005)
    assert edges[("top:5", "mid:9")]["color"] == '"#b2182b"' and edges[("top:5", "mid:4")]["color"] == '"#2166ac"'
    assert edges[("top:5", "mid:4")]["tooltip"] == '"-0.4000"'


def _thumbnails(folder):
    arrays = {}
    for k, (node_id, name) in enumerate(THUMBS.items()):
        arrays[node_id] = np.full((12, 12, 3), 0.2 + 0.3 * k)
        save_thumbnail(arrays[node_id], folder / name)
    return arrays


def test_without_the_dot_program_auto_falls_back_to_matplotlib_and_graphviz_is_an_error(tmp_path, monkeypatch):
    pytest.importorskip("graphviz", reason="the graphviz Python package is not installed")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    arrays = _thumbnails(tmp_path)
    png, engine = draw_graph(GRAPH, arrays, tmp_path / "graph.png", thumbnail_files=THUMBS)
    assert engine == "matplotlib" and png.stat().st_size > 0
    assert (tmp_path / "graph.dot").read_text() == dot_source(GRAPH, THUMBS)
    with pytest.raises(InterlayerError, match="apt-get install graphviz"):
        draw_graph(GRAPH, arrays, tmp_path / "graph.png", thumbnail_files=THUMBS, engine="graphviz")


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's `dot` program is not on PATH")
def test_graphviz_renders_the_thumbnails_and_the_edge_widths(tmp_path):
    graphviz = pytest.importorskip("graphviz", reason="the graphviz Python package is not installed")
    from PIL import Image

    arrays = _thumbnails(tmp_path)
    png, engine = draw_graph(GRAPH, arrays, tmp_path / "graph.png", thumbnail_files=THUMBS, engine="graphviz")
    assert engine == "graphviz" and Image.open(png).size[1] > 3 * 72  # three rows of nodes
    svg = pathlib.Path(graphviz.render("dot", "svg", str(tmp_path / "graph.dot"))).read_text()
    assert sorted(re.findall(r'<image xlink:href="([^"]+)"', svg)) == sorted(THUMBS.values())
    titles = re.findall(r"<title>([^<]+)</title>", svg)
    assert {n["id"] for n in GRAPH["nodes"]} <= set(titles)
    assert {f"{s}&#45;&gt;{t}" for s, t in WIDTHS} == {t for t in titles if "&gt;" in t}
    widths = sorted(float(w) for w in re.findall(r'<path fill="none" stroke="#[0-9a-f]{6}" stroke-width="([\d.]+)"',
                                                  svg))
    assert widths == pytest.approx(sorted(WIDTHS.values()), abs=0.005)

