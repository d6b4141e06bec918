"""A latent's thumbnail: the image where it fires most, dimmed where the latent is silent, the fired patch outlined."""

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
        ``[gh, gw]`` the latent over the image's patch tokens: each patch is dimmed to ``0.25 + 0.75 a / max(a)``
        of its brightness, so the image shows where the latent fires in its own colours; ``None`` (a class-token
        latent) shows the image alone.
    fired : tuple of int or None
        ``(row, col)`` of the patch whose token fired most, outlined.
    patch : tuple of int
        ``(ph, pw)`` pixels per patch.
    scale : int
        Nearest-neighbour upscaling, so that small images stay legible.
    """
    out = np.asarray(image, dtype=np.float64).copy()
    ph, pw = patch
    if activation is not None:
        # where the latent is silent the image is dimmed, where it fires it keeps its own colours
        peak = max(float(np.max(activation)), 1e-12)
        level = np.clip(np.asarray(activation, dtype=np.float64) / peak, 0, 1).repeat(ph, axis=0).repeat(pw, axis=1)
        out = out * (0.25 + 0.75 * level[..., None])
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
