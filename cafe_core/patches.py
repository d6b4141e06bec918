"""Conversions between pixel maps and patch grids, shared by every attributor and metric."""

from __future__ import annotations

import torch

__all__ = ["pixels_to_patches", "patches_to_pixels", "rank_patches"]


def pixels_to_patches(pixels: torch.Tensor, patch_size: tuple[int, int]) -> torch.Tensor:
    """Sum a pixel map ``[B, H, W]`` (or ``[B, C, H, W]``, summed over channels) within each patch.

    Parameters
    ----------
    pixels : torch.Tensor
        ``[B, H, W]`` or ``[B, C, H, W]`` with ``H`` and ``W`` multiples of the patch size.
    patch_size : tuple of int
        ``(ph, pw)``.

    Returns
    -------
    torch.Tensor
        ``[B, H // ph, W // pw]``.
    """
    if pixels.dim() == 4:
        pixels = pixels.sum(dim=1)
    b, h, w = pixels.shape
    ph, pw = patch_size
    if h % ph or w % pw:
        raise ValueError(f"pixel map {h}x{w} is not a whole number of {ph}x{pw} patches")
    return pixels.reshape(b, h // ph, ph, w // pw, pw).sum(dim=(2, 4))


def patches_to_pixels(grid: torch.Tensor, patch_size: tuple[int, int]) -> torch.Tensor:
    """Expand a patch grid ``[..., gh, gw]`` to pixels ``[..., gh * ph, gw * pw]`` (each patch a constant)."""
    ph, pw = patch_size
    return grid.repeat_interleave(ph, dim=-2).repeat_interleave(pw, dim=-1)


def rank_patches(heatmap: torch.Tensor) -> torch.Tensor:
    """Patch indices ``[B, gh * gw]`` (row-major) from most to least relevant.

    Ties keep row-major order (a stable sort), so the ranking of a constant heatmap is deterministic.
    """
    flat = heatmap.reshape(heatmap.shape[0], -1)
    return torch.sort(flat, dim=1, descending=True, stable=True).indices
