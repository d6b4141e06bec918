"""The position embedding of a DINOv2 torch-hub checkpoint at another input size, as DINOv2's own code makes it.

facebookresearch/dinov2's ``interpolate_pos_encoding`` resamples the patch position embedding bicubically
with ``scale_factor = (n + interpolate_offset) / M`` (``M`` the checkpoint's grid, ``n`` the new one) and
no antialiasing for the models without registers (``interpolate_offset = 0.1``), which gives other values
than timm's resampling (``size = n``, antialiased) or Hugging Face's (``size = n``). The models with
registers use ``size = n`` with antialiasing, as timm does, and need nothing here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["HUB_INTERPOLATE_OFFSET", "is_hub_dinov2", "resample_hub_pos_embed"]

HUB_INTERPOLATE_OFFSET = 0.1


def is_hub_dinov2(state: dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` is a DINOv2 torch-hub state dict without registers (``mask_token``, no registers)."""
    return "mask_token" in state and "pos_embed" in state and "register_tokens" not in state


def resample_hub_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``pos_embed [1, 1 + M * M, D]`` (class token first) for a ``grid = (rows, cols)`` of patches.

    The computation of DINOv2's ``interpolate_pos_encoding`` for its models without registers, in float32.
    Returns the input unchanged when the grid is the checkpoint's.
    """
    count = pos_embed.shape[1] - 1
    side = math.isqrt(count)
    rows, cols = grid
    if side * side != count or (rows, cols) == (side, side):
        return pos_embed
    patches = pos_embed[:, 1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    scale = ((rows + HUB_INTERPOLATE_OFFSET) / side, (cols + HUB_INTERPOLATE_OFFSET) / side)
    patches = F.interpolate(patches, scale_factor=scale, mode="bicubic", antialias=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
    return torch.cat([pos_embed[:, :1].float(), patches], dim=1).to(pos_embed.dtype)
