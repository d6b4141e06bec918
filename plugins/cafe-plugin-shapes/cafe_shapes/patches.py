"""How much of each input patch the objects of a scene cover."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["patch_object_fraction", "patch_object_fractions"]


def _patch_shape(mask: np.ndarray, patch_size: int | Sequence[int]) -> tuple[int, int, int, int]:
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, (int, np.integer)) else tuple(patch_size)
    if ph < 1 or pw < 1:
        raise ValueError(f"patch_size must be positive, got {patch_size}")
    height, width = mask.shape
    if height % ph or width % pw:
        raise ValueError(f"mask of shape {mask.shape} does not split into patches of {ph}x{pw}")
    return height // ph, ph, width // pw, pw


def _as_array(mask: Any) -> np.ndarray:
    array = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"mask must be [H, W], got shape {array.shape}")
    return array


def patch_object_fraction(
    mask: Any, patch_size: int | Sequence[int], objects: Sequence[int] | None = None
) -> np.ndarray:
    """Fraction of each patch covered by objects.

    Parameters
    ----------
    mask : array-like
        ``[H, W]`` integer mask of a scene (0 on the background, ``k + 1`` on object ``k``); a numpy array
        or a torch tensor.
    patch_size : int or (int, int)
        Patch height and width in pixels; they must divide ``H`` and ``W``.
    objects : sequence of int, optional
        Indices of the objects to count (e.g. an item's ``info["deciding"]``); all objects when omitted,
        none when empty.

    Returns
    -------
    np.ndarray
        Float64 ``[H // ph, W // pw]`` with values in ``[0, 1]``.
    """
    mask = _as_array(mask)
    gh, ph, gw, pw = _patch_shape(mask, patch_size)
    covered = mask > 0 if objects is None else np.isin(mask, np.asarray(list(objects), dtype=np.int64) + 1)
    return covered.reshape(gh, ph, gw, pw).mean(axis=(1, 3))


def patch_object_fractions(mask: Any, patch_size: int | Sequence[int], num_objects: int | None = None) -> np.ndarray:
    """Fraction of each patch covered by each object.

    Parameters
    ----------
    mask : array-like
        ``[H, W]`` integer mask of a scene (0 on the background, ``k + 1`` on object ``k``).
    patch_size : int or (int, int)
        Patch height and width in pixels; they must divide ``H`` and ``W``.
    num_objects : int, optional
        Number of objects ``K`` (default: the largest value in the mask).

    Returns
    -------
    np.ndarray
        Float64 ``[K, H // ph, W // pw]``; row ``k`` is object ``k``'s coverage of every patch.
    """
    mask = _as_array(mask)
    gh, ph, gw, pw = _patch_shape(mask, patch_size)
    count = int(mask.max(initial=0)) if num_objects is None else num_objects
    ids = np.arange(1, count + 1)
    covered = mask[None, :, :] == ids[:, None, None]
    return covered.reshape(count, gh, ph, gw, pw).mean(axis=(2, 4))
