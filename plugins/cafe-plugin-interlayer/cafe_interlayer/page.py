"""The HTML pages of ``cafe graph`` and ``cafe interlayer``: plain HTML with the figures beside it."""

from __future__ import annotations

import pathlib
from typing import Any

__all__ = ["GRAPHS_NOTE", "graph_html", "write_faithfulness_page", "write_graph_page"]


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


GRAPHS_NOTE = (
    "Relevance is in shares of the top latent (1 per image, averaged over its images); each layer keeps the fewest "
    "latents holding the stated share of the positive relevance reaching its latents. Each latent is drawn as its "
    "thumbnail (the image where it fires most, dimmed where it is silent, the fired patch outlined); edges are as "
    "wide as their weight, red where relevance is positive, blue where negative. Error nodes hold what the SAE at "
    "that layer does not reconstruct; they are not explained further."
)
"""What every page showing concept graphs says about reading them."""


def graph_html(graph: dict[str, Any], figure: str, level: int = 2) -> str:
    """One graph: its figure (at the path ``figure``), its per-layer pruning summary and its heaviest edges.

    ``level`` is the level of the graph's heading (``<h2>``); its parts' headings are one level below.
    """
    from cafe_report import markup

    top = graph["top"]
    heading, sub = f"h{level}", f"h{level + 1}"
    return (
        f'<div class="target"><{heading}>Latent {top["latent"]} of {markup.escape(top["label"])}</{heading}>'
        + markup.figure(figure, f"concept graph of latent {top['latent']}",
                        f"images {', '.join(top['images'])} (read at positions {top['positions']}); "
                        f"{markup.escape(graph['attributor'])}; drawn with {graph['engine']}")
        + f"<{sub}>Layers</{sub}>"
        + markup.table(["SAE", "layer", "parents", "kept", "kept share", "capped", "latents' R+", "error",
                        "decoder bias", "unread tokens", "absorbed"], _layer_rows(graph))
        + f"<{sub}>Heaviest edges</{sub}>" + markup.table(["from", "to", "weight"], _edge_rows(graph), text_columns=2)
        + "</div>"
    )


def write_graph_page(out: pathlib.Path, graphs: list[dict[str, Any]], ip: Any, n_images: int) -> pathlib.Path:
    """``out/index.html``: each graph's figure, its per-layer pruning summary and its heaviest edges."""
    from cafe_report import markup

    body = (f"<h1>Concept graphs of {markup.escape(ip.target.label)}</h1>"
            f'<p class="muted">{n_images} images streamed. {GRAPHS_NOTE} Every graph is also in graphs.json and '
            "graph-*.json/.dot.</p>"
            + "".join(graph_html(graph, graph["figure"]) for graph in graphs))
    return markup.write_page(out / "index.html", markup.page("cafe concept graphs", body))


def write_faithfulness_page(out: pathlib.Path, result: dict[str, Any], table: str) -> pathlib.Path:
    """``out/index.html``: the summary table and the mean curves."""
    from cafe_report import markup

    body = ("<h1>Interlayer insertion and deletion</h1>" + markup.figure("curves.png", "mean curves")
            + f"<pre>{markup.escape(table)}</pre>"
            + '<p class="muted">Per-target rows with their sparse tables: interlayer.json; scores: interlayer.csv.</p>')
    return markup.write_page(out / "index.html", markup.page("cafe interlayer faithfulness", body))
