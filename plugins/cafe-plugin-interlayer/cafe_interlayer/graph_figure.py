"""Drawing a concept graph: graphviz through its Python package when it is installed and works, else matplotlib.

Either way the graph is laid out top-down, one row per SAE, each latent drawn as its thumbnail (the image
where it fires most, its activation map over it) with its layer, index and relevance under it, each error node
as a grey box; edges are as wide as their weight, red where relevance is positive and blue where negative
(the report's diverging palette). ``graph.dot`` is always written, so the graph can be rendered elsewhere.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

__all__ = ["dot_source", "draw_graph"]

_POSITIVE, _NEGATIVE = "#b2182b", "#2166ac"


def _label(node: dict[str, Any]) -> str:
    if node["kind"] == "error":
        return f"error · layer {node['layer']}\n{node['relevance']:+.2f}"
    return f"L{node['layer']} #{node['latent']}\n{node['relevance']:+.2f}"


def _levels(graph: dict[str, Any]) -> list[list[dict[str, Any]]]:
    layers = sorted({n["layer"] for n in graph["nodes"]}, reverse=True)
    rows = []
    for layer in layers:
        nodes = [n for n in graph["nodes"] if n["layer"] == layer]
        latents = sorted((n for n in nodes if n["kind"] == "latent"), key=lambda n: -n["relevance"])
        rows.append(latents + [n for n in nodes if n["kind"] == "error"])
    return rows


def _visible_edges(graph: dict[str, Any], floor: float) -> list[dict[str, Any]]:
    weights = [abs(e["weight"]) for e in graph["edges"]]
    limit = floor * max(weights, default=0.0)
    return [e for e in graph["edges"] if abs(e["weight"]) > limit]


def dot_source(graph: dict[str, Any], thumbnails: dict[str, str], floor: float = 0.02) -> str:
    """The graph in graphviz's DOT language; ``thumbnails`` maps node ids to image paths (relative to the file).

    One row (``rank=same``) per layer; a node with a thumbnail shows it above its label. Each edge is as wide
    as its weight (``penwidth`` from 0.4 to 5.4 for the heaviest), red or blue by its sign, with the weight as
    its ``tooltip``; edges lighter than ``floor`` times the heaviest are left out.
    """
    largest = max((abs(e["weight"]) for e in graph["edges"]), default=1.0) or 1.0
    lines = ["digraph concepts {", "  rankdir=TB; nodesep=0.25; ranksep=0.6;",
             '  node [shape=box, fontsize=9, fontname="Helvetica"]; edge [arrowsize=0.5];']
    for row in _levels(graph):
        names = []
        for node in row:
            label = _label(node).replace("\n", "\\n")
            name = f'"{node["id"]}"'
            names.append(name)
            if node["id"] in thumbnails:
                lines.append(f'  {name} [label="{label}", image="{thumbnails[node["id"]]}", labelloc=b, '
                             'imagepos=tc, height=1.3, width=1.0, fixedsize=true, penwidth=0.5];')
            else:
                style = ', style="rounded,filled,dashed", fillcolor="#eeeeee"' if node["kind"] == "error" else ""
                lines.append(f'  {name} [label="{label}"{style}];')
        lines.append("  { rank=same; " + " ".join(names) + " }")
    for edge in _visible_edges(graph, floor):
        width = 0.4 + 5 * abs(edge["weight"]) / largest
        colour = _POSITIVE if edge["weight"] > 0 else _NEGATIVE
        lines.append(f'  "{edge["source"]}" -> "{edge["target"]}" [penwidth={width:.2f}, color="{colour}", '
                     f'tooltip="{edge["weight"]:+.4f}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _render_graphviz(dot: str, path: pathlib.Path) -> pathlib.Path | None:
    """Render with the graphviz package, or ``None`` when it is not installed or its ``dot`` cannot run."""
    try:
        import graphviz
    except ImportError:
        return None
    try:
        source = graphviz.Source(dot, directory=str(path.parent), filename=path.stem + ".gv", format="png")
        rendered = pathlib.Path(source.render(cleanup=True))
    except Exception:  # graphviz.ExecutableNotFound, a failed render: fall back to matplotlib
        return None
    rendered.replace(path)
    return path


def _render_matplotlib(graph: dict[str, Any], thumbnails: dict[str, np.ndarray], path: pathlib.Path,
                       title: str, floor: float) -> pathlib.Path:
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    from cafe_report.drawing import new_figure, save_png

    rows = _levels(graph)
    widest = max(len(r) for r in rows)
    figure = new_figure(max(4.0, 1.05 * widest + 0.6), 1.75 * len(rows) + 0.5 + 0.22 * len(graph.get("layers", [])))
    ax = figure.subplots()
    where = {}
    for level, row in enumerate(rows):
        for k, node in enumerate(row):
            where[node["id"]] = ((k + 0.5) * widest / len(row), -level * 1.0)
    largest = max((abs(e["weight"]) for e in graph["edges"]), default=1.0) or 1.0
    for edge in _visible_edges(graph, floor):
        (x0, y0), (x1, y1) = where[edge["source"]], where[edge["target"]]
        ax.plot([x0, x1], [y0 - 0.46, y1 + 0.2], color=_POSITIVE if edge["weight"] > 0 else _NEGATIVE,
                linewidth=0.4 + 5 * abs(edge["weight"]) / largest, alpha=0.55, solid_capstyle="round", zorder=1)
    for node_id, (x, y) in where.items():
        node = next(n for n in graph["nodes"] if n["id"] == node_id)
        if node_id in thumbnails:
            image = OffsetImage(thumbnails[node_id], zoom=0.55, interpolation="nearest")
            ax.add_artist(AnnotationBbox(image, (x, y + 0.02), frameon=True, pad=0.1, zorder=3,
                                         bboxprops={"linewidth": 0.5, "edgecolor": "#555555"}))
            ax.text(x, y - 0.32, _label(node), ha="center", va="top", fontsize=6.5, zorder=4)
        else:
            box = {"boxstyle": "round,pad=0.3", "facecolor": "#eeeeee", "edgecolor": "#777777", "linestyle": "--"}
            ax.text(x, y, _label(node), ha="center", va="center", fontsize=6.5, bbox=box, zorder=4)
    notes = []
    for layer in graph.get("layers", []):
        kept = "—" if layer["kept_share"] is None else f"{layer['kept_share']:.0%}"
        notes.append(f"{layer['label']}: {layer['kept']} latents kept ({kept} of their positive relevance"
                     f"{', capped' if layer['capped'] else ''}) · unread tokens {layer['uncovered']:+.2f} · "
                     f"decoder bias {layer['bias']:+.2f} · absorbed {layer['absorbed']:+.2f}")
    bottom = -(len(rows) - 1) - 0.62
    if notes:
        ax.text(0.0, bottom, "\n".join(notes), ha="left", va="top", fontsize=6, color="#444444")
    ax.set_xlim(-0.1, widest + 0.1)
    ax.set_ylim(bottom - 0.13 * len(notes) - 0.02, 0.55)
    ax.axis("off")
    ax.set_title(title, fontsize=8)
    return save_png(figure, path)


def draw_graph(graph: dict[str, Any], thumbnails: dict[str, np.ndarray], path: pathlib.Path, *,
               thumbnail_files: dict[str, str] | None = None, engine: str = "auto", title: str = "",
               floor: float = 0.02) -> tuple[pathlib.Path, str]:
    """Draw ``graph`` (:meth:`ConceptGraph.to_json`) to ``path`` (PNG) and write ``graph.dot`` beside it.

    Parameters
    ----------
    thumbnails : dict
        Node id -> RGB array in ``[0, 1]`` (matplotlib).
    thumbnail_files : dict, optional
        Node id -> image path relative to ``path``'s folder (graphviz).
    engine : {"auto", "graphviz", "matplotlib"}
        ``"auto"``: graphviz when its package is installed and its ``dot`` runs, else matplotlib.
    floor : float
        Edges lighter than this fraction of the heaviest are not drawn (they stay in the JSON).

    Returns
    -------
    path : pathlib.Path
        The PNG.
    engine : str
        The engine that drew it.
    """
    dot = dot_source(graph, thumbnail_files or {}, floor)
    path.with_suffix(".dot").write_text(dot)
    if engine in ("auto", "graphviz"):
        rendered = _render_graphviz(dot, path)
        if rendered is not None:
            return rendered, "graphviz"
        if engine == "graphviz":
            from .errors import InterlayerError

            raise InterlayerError("graphviz could not draw the graph: pip install graphviz and install its `dot` "
                                  "program (Debian: apt-get install graphviz), or use --engine matplotlib")
    return _render_matplotlib(graph, thumbnails, path, title, floor), "matplotlib"
