"""A feature page's gallery: per image, the image, activation map, iERF and a zoomed crop of the cause patches."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

import numpy as np

from .colours import CAUSE_EDGE
from .drawing import blank_panel, draw_overlay, new_figure, outline_cells, save_png

__all__ = ["GalleryRow", "cause_crop", "gallery_figure"]


@dataclass
class GalleryRow:
    """One image of a gallery.

    Attributes
    ----------
    label : str
        Shown above the row (image id, activation, relevance).
    image : numpy.ndarray
        ``[H, W, 3]`` in ``[0, 1]``.
    activation : numpy.ndarray or None
        ``[gh, gw]`` activation map; None for a prefix-token target (a note is drawn instead).
    relevance : numpy.ndarray
        ``[gh, gw]`` iERF.
    cause : numpy.ndarray
        Boolean ``[gh, gw]`` cause patches.
    fired : tuple of int or None
        ``(row, col)`` of the fired patch.
    """

    label: str
    image: np.ndarray
    activation: np.ndarray | None
    relevance: np.ndarray
    cause: np.ndarray
    fired: tuple[int, int] | None


def cause_crop(cause: np.ndarray, patch: tuple[int, int], margin: int = 1) -> tuple[slice, slice] | None:
    """Pixel rows and columns of the cause patches' bounding box, widened by ``margin`` patches (clipped)."""
    rows, cols = np.nonzero(cause)
    if not len(rows):
        return None
    gh, gw = cause.shape
    ph, pw = patch
    r0, r1 = max(0, rows.min() - margin), min(gh, rows.max() + 1 + margin)
    c0, c1 = max(0, cols.min() - margin), min(gw, cols.max() + 1 + margin)
    return slice(r0 * ph, r1 * ph), slice(c0 * pw, c1 * pw)


def gallery_figure(path: pathlib.Path, rows: list[GalleryRow], patch: tuple[int, int], title: str) -> pathlib.Path:
    """One row per image: image, activation map, iERF with cause patches, the cause patches cropped and zoomed."""
    size = 1.25
    figure = new_figure(4 * size, max(1, len(rows)) * (size + 0.22) + 0.3)
    figure.suptitle(title, fontsize=8)
    axes = figure.subplots(max(1, len(rows)), 4, squeeze=False)
    if not rows:
        for ax in axes[0]:
            blank_panel(ax, "no image where the latent is active")
        return save_png(figure, path)
    for ax_row, row in zip(axes, rows):
        draw_overlay(ax_row[0], row.image, None, patch, kind="image", fired=row.fired, title=row.label)
        if row.activation is None:
            blank_panel(ax_row[1], "class-token latent:\nno activation map", "activation")
        else:
            draw_overlay(ax_row[1], row.image, row.activation, patch, kind="activation", fired=row.fired,
                         title="activation")
        draw_overlay(ax_row[2], row.image, row.relevance, patch, kind="relevance", fired=row.fired,
                     cause=row.cause, title="iERF")
        crop = cause_crop(row.cause, patch)
        if crop is None:
            blank_panel(ax_row[3], "no positive\nrelevance", "cause, zoomed")
        else:
            _draw_crop(ax_row[3], row, crop, patch)
    return save_png(figure, path)


def _draw_crop(ax, row: GalleryRow, crop: tuple[slice, slice], patch: tuple[int, int]) -> None:
    rows, cols = crop
    piece = row.image[rows, cols]
    h, w = piece.shape[:2]
    ax.imshow(piece, extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="nearest")
    ph, pw = patch
    sub = row.cause[rows.start // ph : rows.stop // ph, cols.start // pw : cols.stop // pw]
    outline_cells(ax, sub, patch, CAUSE_EDGE)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("cause, zoomed", fontsize=8)
