"""Ground truth the insertion test cannot give: do a heatmap's top patches lie on the objects that decided?"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from cafe_core.patches import rank_patches
from cafe_core.protocols import MetricResult, RunContext, TargetFunction

from .patches import patch_object_fraction

__all__ = ["ObjectHit"]


def _grid_mask(mask: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """The mask at the backbone's input size (nearest neighbour), so it lines up with the patch grid."""
    height, width = image_size
    rows = (np.arange(height) * mask.shape[0]) // height
    cols = (np.arange(width) * mask.shape[1]) // width
    return mask[rows[:, None], cols[None, :]]


class ObjectHit:
    """Fraction of a heatmap's ``top_k`` patches that touch the chosen objects of the image.

    Parameters
    ----------
    top_k : int
        How many of the most relevant patches to check.
    objects : {"deciding", "any"}
        ``"deciding"``: the objects that decided the image's label (``info["deciding"]``); ``"any"``: every
        object.

    Notes
    -----
    A patch counts as on an object when any of its pixels belongs to one. The score is NaN for an image
    without such objects (a label decided by absence) and for images without a ``mask`` annotation. The
    mask is resized (nearest neighbour) to the backbone's input size when the two differ.
    """

    higher_is_better = True
    ranking_based = True
    score_range = (0.0, 1.0)

    def __init__(self, top_k: int = 1, objects: str = "deciding") -> None:
        self.top_k = top_k
        self.objects = objects

    def evaluate(
        self,
        target: TargetFunction,
        x: torch.Tensor,
        heatmap: torch.Tensor,
        context: RunContext,
        annotations: Sequence[dict[str, Any]] | None = None,
    ) -> MetricResult:
        """Score each row's heatmap against its image's object mask."""
        backbone = target.backbone
        annotations = annotations if annotations is not None else [{}] * len(x)
        top = rank_patches(heatmap)[:, : self.top_k].cpu()
        scores = torch.full((len(x),), float("nan"), dtype=torch.float64)
        for row, info in enumerate(annotations):
            if "mask" not in info:
                continue
            chosen = None if self.objects == "any" else list(info.get("deciding", []))
            if chosen == []:
                continue
            mask = _grid_mask(np.asarray(info["mask"]), backbone.image_size)
            on_object = patch_object_fraction(mask, backbone.patch_size, chosen).reshape(-1) > 0
            if not on_object.any():
                continue
            scores[row] = float(on_object[top[row].numpy()].mean())
        return MetricResult(score=scores.to(heatmap.dtype))
