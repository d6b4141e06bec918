"""The report's figures: one strip of maps and one plot of curves per target, and the summary plots."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

import numpy as np

from .colours import series_style
from .drawing import blank_panel, draw_overlay, new_figure, save_png
from .summary import Summary

__all__ = ["MapPanel", "curves_figure", "summary_figure", "target_strip"]

PANEL_INCHES = 1.55


@dataclass
class MapPanel:
    """One panel of a target's strip.

    Attributes
    ----------
    title : str
    heatmap : numpy.ndarray or None
        ``[gh, gw]``; None for the image itself or a note.
    kind : {"image", "activation", "relevance", "note"}
    cause : numpy.ndarray or None
        Boolean ``[gh, gw]`` cause patches to outline.
    note : str
        What a ``"note"`` panel says instead of a map.
    """

    title: str
    heatmap: np.ndarray | None = None
    kind: str = "relevance"
    cause: np.ndarray | None = None
    note: str = ""


def target_strip(
    path: pathlib.Path, image: np.ndarray, panels: list[MapPanel], patch: tuple[int, int],
    fired: tuple[int, int] | None,
) -> pathlib.Path:
    """The image and its maps side by side, each with the fired patch (dotted) and cause patches outlined."""
    figure = new_figure(PANEL_INCHES * len(panels), PANEL_INCHES + 0.25)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        if panel.kind == "note":
            blank_panel(ax, panel.note, panel.title)
        else:
            draw_overlay(ax, image, panel.heatmap, patch, kind=panel.kind, fired=fired, cause=panel.cause,
                         title=panel.title)
    return save_png(figure, path)


def curves_figure(path: pathlib.Path, curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray, float]]],
                  higher_is_better: dict[str, bool | None]) -> pathlib.Path:
    """One panel per metric with curves (insertion, deletion...), every attributor's curve on it.

    Parameters
    ----------
    curves : dict
        ``{metric: {attributor: (fractions, curve, score)}}``.
    """
    metrics = sorted(curves)
    attributors = sorted({a for per in curves.values() for a in per})
    figure = new_figure(2.7 * max(len(metrics), 1) + 1.5, 2.2)
    axes = figure.subplots(1, max(len(metrics), 1), squeeze=False)[0]
    handles = {}
    for ax, metric in zip(axes, metrics):
        for index, attributor in enumerate(attributors):
            if attributor not in curves[metric]:
                continue
            fractions, curve, _ = curves[metric][attributor]
            (line,) = ax.plot(fractions, curve, linewidth=1.4, **series_style(index))
            handles.setdefault(attributor, line)
        arrow = {True: " ↑", False: " ↓"}.get(higher_is_better.get(metric), "")
        ax.set_title(f"{metric}{arrow}", fontsize=8)
        ax.set_xlabel("fraction of patches", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("latent / on full image", fontsize=7)
    figure.legend(list(handles.values()), list(handles), loc="outside right center", fontsize=7, frameon=False)
    return save_png(figure, path)


def summary_figure(path: pathlib.Path, summary: Summary, metrics: list[str]) -> pathlib.Path | None:
    """Means with their intervals (left) and paired differences against the reference (right), per metric."""
    metrics = [m for m in metrics if summary.of_metric(m)]
    if not metrics:
        return None
    with_difference = summary.reference is not None
    groups = sorted({row.group for row in summary.rows})
    attributors = sorted({row.attributor for row in summary.rows})
    height = 0.6 + 0.22 * len(groups) * len(attributors)
    columns = 2 if with_difference else 1
    figure = new_figure(3.4 * columns, height * len(metrics))
    axes = figure.subplots(len(metrics), columns, squeeze=False)
    for m, metric in enumerate(metrics):
        rows = summary.of_metric(metric)
        labels, positions = [], []
        for g, group in enumerate(groups):
            for a, attributor in enumerate(attributors):
                row = next((r for r in rows if r.group == group and r.attributor == attributor), None)
                if row is None:
                    continue
                y = -(g * (len(attributors) + 1) + a)
                style = series_style(a)
                _interval(axes[m][0], row.mean, y, style["color"])
                if with_difference and row.difference is not None:
                    _interval(axes[m][1], row.difference, y, style["color"])
                labels.append(f"{attributor} · {group}" if len(groups) > 1 else attributor)
                positions.append(y)
        arrow = {True: " ↑", False: " ↓"}.get(summary.higher_is_better.get(metric), "")
        axes[m][0].set_title(f"{metric}{arrow}: mean, {summary.level:.0%} interval", fontsize=8)
        if with_difference:
            axes[m][1].axvline(0, color="#555555", linewidth=0.8)
            axes[m][1].set_title(f"{metric}: minus {summary.reference}, paired", fontsize=8)
            axes[m][1].set_yticks(positions, [""] * len(positions))
        axes[m][0].set_yticks(positions, labels, fontsize=7)
        for ax in axes[m]:
            ax.tick_params(axis="x", labelsize=7)
            ax.grid(axis="x", alpha=0.3)
    return save_png(figure, path)


def _interval(ax, estimate, y: float, colour: str) -> None:
    if not estimate.n:
        return
    ax.plot([estimate.low, estimate.high], [y, y], color=colour, linewidth=2, solid_capstyle="butt")
    ax.plot([estimate.value], [y], marker="o", color=colour, markersize=4)
