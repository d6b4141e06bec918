"""The HTML pages of ``cafe graph`` and ``cafe interlayer``: plain HTML with the figures beside it."""

from __future__ import annotations

import pathlib
from typing import Any

__all__ = ["write_faithfulness_page", "write_graph_page"]


def _layer_rows(graph: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for layer in graph["layers"]:
        share = layer["kept_share"]
        rows.append([layer["label"], layer["layer"], layer["parents"], layer["kept"],
                     "—" if share is None else f"{share:.1%}", "yes" if layer["capped"] else "no",
                     f"{layer['positive_latent_relevance']:.3f}", f"{layer['error']:+.3f}", f"{layer['bias']:+.3f}",
                     f"{layer['uncovered']:+.3f}", f"{layer['absorbed']:+.3f}"])
    return rows


def _edge_rows(graph: dict[str, Any], count: int = 15) -> list[list[Any]]:
    edges = sorted(graph["edges"], key=lambda e: -abs(e["weight"]))[:count]
    return [[e["source"], e["target"], f"{e['weight']:+.3f}"] for e in edges]


def write_graph_page(out: pathlib.Path, graphs: list[dict[str, Any]], ip: Any, n_images: int) -> pathlib.Path:
    """``out/index.html``: each graph's figure, its per-layer pruning summary and its heaviest edges."""
    from cafe_report import markup

    sections = []
    for graph in graphs:
        top = graph["top"]
        sections.append(
            f'<div class="target"><h2>Latent {top["latent"]} of {markup.escape(top["label"])}</h2>'
            + markup.figure(graph["figure"], f"concept graph of latent {top['latent']}",
                            f"images {', '.join(top['images'])} (read at positions {top['positions']}); "
                            f"drawn with {graph['engine']}")
            + "<h3>Layers</h3>"
            + markup.table(["SAE", "layer", "parents", "kept", "kept share", "capped", "latents' R+", "error",
                            "decoder bias", "unread tokens", "absorbed"], _layer_rows(graph))
            + "<h3>Heaviest edges</h3>" + markup.table(["from", "to", "weight"], _edge_rows(graph), text_columns=2)
            + "</div>"
        )
    body = (f"<h1>Concept graphs of {markup.escape(ip.target.label)}</h1>"
            f'<p class="muted">{n_images} images streamed. Relevance is in shares of the top latent (1 per image, '
            "averaged over its images); each layer keeps the fewest latents holding the stated share of the positive "
            "relevance reaching its latents. Error nodes hold what the SAE at that layer does not reconstruct; they "
            "are not explained further. Every graph is also in graphs.json and graph-*.json/.dot.</p>"
            + "".join(sections))
    return markup.write_page(out / "index.html", markup.page("cafe concept graphs", body))


def write_faithfulness_page(out: pathlib.Path, result: dict[str, Any], table: str) -> pathlib.Path:
    """``out/index.html``: the summary table and the mean curves."""
    from cafe_report import markup

    body = ("<h1>Interlayer insertion and deletion</h1>" + markup.figure("curves.png", "mean curves")
            + f"<pre>{markup.escape(table)}</pre>"
            + '<p class="muted">Per-target rows with their sparse tables: interlayer.json; scores: interlayer.csv.</p>')
    return markup.write_page(out / "index.html", markup.page("cafe interlayer faithfulness", body))
