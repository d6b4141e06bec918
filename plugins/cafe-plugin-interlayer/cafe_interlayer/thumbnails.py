"""A latent's thumbnail: the image where it fires most, its activation map over it, the fired patch outlined."""

from __future__ import annotations

import pathlib

import numpy as np

__all__ = ["save_thumbnail", "thumbnail"]

_FIRED = np.array([0.94, 0.89, 0.26])  # the report's yellow for the fired patch


def thumbnail(image: np.ndarray, activation: np.ndarray | None, fired: tuple[int, int] | None,
              patch: tuple[int, int], scale: int = 3) -> np.ndarray:
    """An RGB array ``[H * scale, W * scale, 3]`` in ``[0, 1]``.

    Parameters
    ----------
    image : numpy.ndarray
        ``[H, W, 3]`` in ``[0, 1]``, as the model saw it.
    activation : numpy.ndarray or None
        ``[gh, gw]`` the latent over the image's patch tokens (``cividis``, from 0 to its maximum) blended over
        the greyed image; ``None`` (a class-token latent) shows the image alone.
    fired : tuple of int or None
        ``(row, col)`` of the patch whose token fired most, outlined.
    patch : tuple of int
        ``(ph, pw)`` pixels per patch.
    scale : int
        Nearest-neighbour upscaling, so that small images stay legible.
    """
    from matplotlib import colormaps

    out = np.asarray(image, dtype=np.float64).copy()
    ph, pw = patch
    if activation is not None:
        grey = out @ np.array([0.299, 0.587, 0.114])
        peak = max(float(np.max(activation)), 1e-12)
        colours = colormaps["cividis"](np.clip(np.asarray(activation) / peak, 0, 1))[..., :3]
        colours = colours.repeat(ph, axis=0).repeat(pw, axis=1)
        out = 0.35 * grey[..., None] + 0.65 * colours
    out = out.repeat(scale, axis=0).repeat(scale, axis=1)
    if fired is not None:
        r, c = fired
        top, left = r * ph * scale, c * pw * scale
        bottom, right = top + ph * scale, left + pw * scale
        out[top : top + 2, left:right] = _FIRED
        out[bottom - 2 : bottom, left:right] = _FIRED
        out[top:bottom, left : left + 2] = _FIRED
        out[top:bottom, right - 2 : right] = _FIRED
    return np.clip(out, 0, 1)


def save_thumbnail(array: np.ndarray, path: pathlib.Path) -> pathlib.Path:
    """Write a thumbnail as a PNG."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((array * 255).round().astype(np.uint8)).save(path, optimize=True)
    return path
