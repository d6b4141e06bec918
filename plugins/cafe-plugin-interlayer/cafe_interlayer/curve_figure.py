"""The mean interlayer insertion and deletion curves of every attributor, one panel per source and metric."""

from __future__ import annotations

import pathlib
from typing import Any

__all__ = ["curves_figure"]


def curves_figure(path: pathlib.Path, result: dict[str, Any]) -> pathlib.Path:
    """Mean curves over targets (rows whose full value is zero are left out), Okabe-Ito colours and line styles."""
    from cafe_report.colours import series_style
    from cafe_report.drawing import new_figure, save_png

    sources = [s["label"] for s in result["sources"]]
    metrics = ("insertion", "deletion")
    attributors = list(result["attributors"])
    figure = new_figure(2.6 * len(metrics) + 0.4, 2.1 * len(sources) + 0.3)
    axes = figure.subplots(len(sources), len(metrics), squeeze=False)
    for r, source in enumerate(sources):
        for c, metric in enumerate(metrics):
            ax = axes[r][c]
            for k, attributor in enumerate(attributors):
                found = [cv for cv in result["curves"]
                         if (cv["source"], cv["attributor"], cv["metric"]) == (source, attributor, metric)]
                if found:
                    ax.plot(found[0]["fractions"], found[0]["mean"], label=attributor, linewidth=1.3,
                            **series_style(k))
            ax.set_title(f"{metric} · source {source}", fontsize=8)
            ax.set_xlabel("fraction of active source units", fontsize=7)
            ax.set_ylabel("target / full", fontsize=7)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6, loc="lower right")
    return save_png(figure, path)
