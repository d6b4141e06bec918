"""The plot of the non-local share per layer with its interval."""

from __future__ import annotations

import pathlib
from typing import Any

from .colours import SERIES_COLOURS
from .drawing import new_figure, save_png

__all__ = ["nonlocal_figure"]


def nonlocal_figure(path: pathlib.Path, result: dict[str, Any]) -> pathlib.Path:
    """Bars of the non-local share per layer, Wilson 95% intervals as error bars, ``k / n`` above each bar."""
    layers = result["layers"]
    figure = new_figure(1.2 + 0.9 * len(layers), 2.6)
    ax = figure.subplots()
    x = list(range(len(layers)))
    shares = [row["share"] for row in layers]
    errors = [[row["share"] - row["low"] for row in layers], [row["high"] - row["share"] for row in layers]]
    ax.bar(x, shares, color=SERIES_COLOURS[0], width=0.6, yerr=errors, capsize=4, ecolor="#222222")
    for i, row in enumerate(layers):
        ax.text(i, row["high"] + 0.02, f"{row['nonlocal']}/{row['sampled']}", ha="center", fontsize=7)
    ax.set_xticks(x, [f"layer {row['layer']}" for row in layers], fontsize=8)
    ax.set_ylim(0, min(1.0, max([row["high"] for row in layers] + [0.1]) + 0.12))
    ax.set_ylabel("non-local share", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(f"non-local: {result['criterion']} ({result['attributor']})", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_png(figure, path)
