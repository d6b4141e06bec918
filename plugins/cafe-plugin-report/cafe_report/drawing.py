"""Matplotlib primitives shared by every figure: heatmap overlays, patch outlines, saving small PNGs."""

from __future__ import annotations

import io
import pathlib
from typing import Any

import numpy as np
from matplotlib import patheffects
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure

from .colours import ACTIVATION_CMAP, CAUSE_EDGE, FIRED_EDGE, RELEVANCE_CMAP

__all__ = ["blank_panel", "draw_overlay", "new_figure", "outline_cells", "outline_segments", "save_png"]

DPI = 100


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width x height`` inches, not attached to pyplot (no global state, no display)."""
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_png(figure: Figure, path: pathlib.Path) -> pathlib.Path:
    """Write ``figure`` as a 256-colour PNG and return the path.

    The palette keeps pages light (a third of the size of a true-colour PNG) at no visible cost for these
    flat-coloured figures.
    """
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    buffer.seek(0)
    with Image.open(buffer) as rendered:
        palette = rendered.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                                   dither=Image.Dither.NONE)
    palette.save(path, format="PNG", optimize=True)
    return path


def outline_segments(mask: np.ndarray) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """The boundary of the union of the ``True`` cells of a ``[gh, gw]`` mask, as segments in cell units.

    Cell ``(r, c)`` spans ``x`` in ``[c, c + 1]`` and ``y`` in ``[r, r + 1]``; an edge is kept where the cell
    on its other side is outside the mask (or the grid).
    """
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1)
    segments = []
    for r, c in zip(*np.nonzero(mask)):
        pr, pc = r + 1, c + 1
        if not padded[pr - 1, pc]:
            segments.append(((c, r), (c + 1, r)))
        if not padded[pr + 1, pc]:
            segments.append(((c, r + 1), (c + 1, r + 1)))
        if not padded[pr, pc - 1]:
            segments.append(((c, r), (c, r + 1)))
        if not padded[pr, pc + 1]:
            segments.append(((c + 1, r), (c + 1, r + 1)))
    return segments


def outline_cells(axes: Any, mask: np.ndarray, patch: tuple[int, int], edge: tuple[str, str], *,
                  dotted: bool = False, width: float = 1.6) -> None:
    """Outline the union of a mask's cells on ``axes`` whose data coordinates are pixels."""
    ph, pw = patch
    segments = [[(x0 * pw - 0.5, y0 * ph - 0.5), (x1 * pw - 0.5, y1 * ph - 0.5)]
                for (x0, y0), (x1, y1) in outline_segments(mask)]
    if not segments:
        return
    lines = LineCollection(segments, colors=edge[0], linewidths=width, linestyles=":" if dotted else "-",
                           capstyle="round", zorder=4)
    lines.set_path_effects([patheffects.withStroke(linewidth=width + 1.6, foreground=edge[1])])
    axes.add_collection(lines)


def _grey(image: np.ndarray) -> np.ndarray:
    return image @ np.array([0.299, 0.587, 0.114])


def draw_overlay(
    axes: Any,
    image: np.ndarray,
    heatmap: np.ndarray | None,
    patch: tuple[int, int],
    *,
    kind: str = "relevance",
    fired: tuple[int, int] | None = None,
    cause: np.ndarray | None = None,
    title: str = "",
) -> None:
    """Draw ``heatmap [gh, gw]`` over a greyed ``image [H, W, 3]``, with the fired patch and cause patches outlined.

    Parameters
    ----------
    kind : {"relevance", "activation", "image"}
        Signed relevance (diverging map centred on zero, scaled to the largest ``|value|``), a non-negative
        activation (``cividis`` from 0 to its maximum), or the image alone.
    fired : tuple of int, optional
        ``(row, col)`` of the fired token's patch.
    cause : numpy.ndarray, optional
        Boolean ``[gh, gw]`` mask of the cause patches.
    """
    h, w = image.shape[:2]
    extent = (-0.5, w - 0.5, h - 0.5, -0.5)
    if kind == "image" or heatmap is None:
        axes.imshow(image, extent=extent, interpolation="nearest")
    else:
        axes.imshow(_grey(image), cmap="gray", vmin=0, vmax=1, extent=extent, interpolation="nearest", alpha=0.9)
        values = np.asarray(heatmap, dtype=np.float64)
        if kind == "relevance":
            limit = float(np.abs(values).max()) or 1.0
            norm = TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit)
            cmap = RELEVANCE_CMAP
        else:
            norm = Normalize(vmin=0.0, vmax=float(max(values.max(), 1e-12)))
            cmap = ACTIVATION_CMAP
        axes.imshow(values, cmap=cmap, norm=norm, extent=extent, interpolation="nearest", alpha=0.72)
    if cause is not None:
        outline_cells(axes, cause, patch, CAUSE_EDGE)
    if fired is not None:
        mask = np.zeros((h // patch[0], w // patch[1]), dtype=bool)
        mask[fired] = True
        outline_cells(axes, mask, patch, FIRED_EDGE, dotted=True, width=2.0)
    axes.set_xlim(-0.5, w - 0.5)
    axes.set_ylim(h - 0.5, -0.5)
    axes.set_xticks([])
    axes.set_yticks([])
    if title:
        axes.set_title(title, fontsize=8)


def blank_panel(axes: Any, text: str, title: str = "") -> None:
    """A panel that says why there is nothing to draw, instead of drawing an empty map."""
    axes.set_xticks([])
    axes.set_yticks([])
    for spine in axes.spines.values():
        spine.set_linestyle(":")
        spine.set_color("#777777")
    axes.text(0.5, 0.5, text, ha="center", va="center", fontsize=7, wrap=True, transform=axes.transAxes,
              color="#333333")
    if title:
        axes.set_title(title, fontsize=8)
