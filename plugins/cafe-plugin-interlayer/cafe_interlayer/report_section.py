"""The concept graphs of a run in its report: the section ``cafe report`` adds for this plugin.

``cafe graph SPEC --out RUN_DIR/graphs`` writes graphs into a run directory, where the run's report finds them
(any folder of the run directory holding a ``graphs.json``); ``cafe report RUN_DIR --include DIR`` adds the
graphs of a folder kept elsewhere. Their figures are copied into the report folder, so the report stays whole
when it is moved.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any

from .page import GRAPHS_NOTE, graph_html

__all__ = ["FOLDER", "concept_graph_section", "graph_folders"]

FOLDER = "concept-graphs"
"""The report's folder of the graphs' figures."""

INDEX = "graphs.json"


def graph_folders(run_dir: pathlib.Path, include: list[pathlib.Path]) -> list[pathlib.Path]:
    """Folders written by ``cafe graph``: those of ``run_dir`` (one level down) and those given, in this order.

    A given folder counts when it holds ``graphs.json`` itself or in one of its folders.
    """
    found = sorted(p.parent for p in pathlib.Path(run_dir).glob(f"*/{INDEX}"))
    for folder in include:
        folder = pathlib.Path(folder)
        found += [folder] if (folder / INDEX).is_file() else sorted(p.parent for p in folder.glob(f"*/{INDEX}"))
    return list(dict.fromkeys(p.resolve() for p in found))


def _copy_figures(folder: pathlib.Path, graphs: list[dict[str, Any]], target: pathlib.Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for graph in graphs:
        figure = folder / graph["figure"]
        if figure.is_file():
            shutil.copy2(figure, target / figure.name)


def concept_graph_section(context: Any) -> Any:
    """The report section of every concept graph found for the run, or ``None`` when there is none.

    Parameters
    ----------
    context : cafe_report.extension.SectionContext
        The run directory, the report folder and the folders given with ``--include``.
    """
    from cafe_report import markup
    from cafe_report.extension import ReportSection

    figures = pathlib.Path(context.out) / FOLDER
    shutil.rmtree(figures, ignore_errors=True)  # figures of graphs since removed
    folders = graph_folders(context.run_dir, context.include)
    if not folders:
        return None
    run_dir = pathlib.Path(context.run_dir).resolve()
    parts = [f'<p class="muted">Written by <code>cafe graph</code>. {GRAPHS_NOTE}</p>']
    for k, folder in enumerate(folders):
        written = json.loads((folder / INDEX).read_text())
        graphs = written.get("graphs", [])
        where = folder.relative_to(run_dir) if folder.is_relative_to(run_dir) else folder
        parts.append(f"<p>From <code>{markup.escape(where)}</code>: {len(graphs)} graph(s) over "
                     f"{written.get('images', '?')} images streamed.</p>")
        copied = figures / f"{k + 1}-{folder.name}"
        _copy_figures(folder, graphs, copied)
        parts += [graph_html(graph, (copied / graph["figure"]).relative_to(context.out).as_posix(), level=3)
                  for graph in graphs]
    return ReportSection("concept-graphs", "Concept graphs", "\n".join(parts))
