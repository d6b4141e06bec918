"""Token geometry shared by backbones with one token grid (ViTs) and with one per layer (conv nets)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["layer_grid", "layer_width", "own_patch"]


def layer_grid(backbone: Any, layer: int) -> tuple[int, int]:
    """The token grid ``(h, w)`` of a backbone's layer (its heatmap grid unless it defines ``layer_grid``)."""
    method = getattr(backbone, "layer_grid", None)
    return tuple(method(layer)) if callable(method) else tuple(backbone.grid_size)


def layer_width(backbone: Any, layer: int) -> int:
    """The token width of a backbone's layer (``width`` unless it defines ``layer_width``)."""
    method = getattr(backbone, "layer_width", None)
    return int(method(layer)) if callable(method) else int(backbone.width)


def own_patch(backbone: Any, layer: int, positions: torch.Tensor) -> torch.Tensor:
    """Index (row-major) of the heatmap patch that holds each token's own cell; -1 for prefix tokens.

    A token of a layer whose grid is finer than the heatmap grid lies in the heatmap patch covering it.
    """
    h, w = layer_grid(backbone, layer)
    gh, gw = backbone.grid_size
    cell = positions - len(backbone.prefix_tokens)
    row, col = torch.div(cell.clamp_min(0), w, rounding_mode="floor"), cell.clamp_min(0) % w
    patch = torch.div(row * gh, h, rounding_mode="floor") * gw + torch.div(col * gw, w, rounding_mode="floor")
    return torch.where(cell >= 0, patch, torch.full_like(patch, -1))
