"""Where each stored heatmap puts its cause, computed from the heatmaps with the faithfulness plugin's measures."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cafe_core.protocols import own_patch
from cafe_faithfulness.cause import cause_counts, cause_masks, relevance_concentration
from cafe_faithfulness.nonlocality import centre_of_mass, mass_outside, spearman

__all__ = ["LOCALITY_COLUMNS", "Locality", "cause_mask", "fired_cells", "measure_locality"]

LOCALITY_COLUMNS = {
    "cause_patches": "cause patches",
    "own_patch_share": "own patch share",
    "nonlocal_mass": "mass outside 3x3",
    "relevance_distance": "distance to centre",
    "activation_agreement": "rank corr. with activation map",
}


@dataclass
class Locality:
    """Per row of a batch of heatmaps: the measures of :data:`LOCALITY_COLUMNS` as float arrays ``[N]``."""

    values: dict[str, np.ndarray]

    def row(self, i: int) -> dict[str, float]:
        """The measures of one row."""
        return {name: float(values[i]) for name, values in self.values.items()}


def fired_cells(backbone, layer: int, positions: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, column and presence (``False`` for prefix tokens) of each position's heatmap patch."""
    patch = own_patch(backbone, layer, torch.as_tensor(positions, dtype=torch.long)).cpu().numpy()
    gw = backbone.grid_size[1]
    return np.maximum(patch, 0) // gw, np.maximum(patch, 0) % gw, patch >= 0


def measure_locality(
    heatmaps: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    has_patch: np.ndarray,
    activation: np.ndarray | None,
    *,
    share: float = 0.5,
    radius: int = 1,
) -> Locality:
    """The locality measures of heatmaps ``[N, gh, gw]`` whose targets fired at ``(rows, cols)``.

    Parameters
    ----------
    activation : numpy.ndarray, optional
        The activation maps ``[N, gh, gw]`` of the same targets, for the rank correlation.
    share : float
        Share of the positive relevance the cause patches hold.
    radius : int
        Neighbourhood of the fired patch for the mass outside it.
    """
    h = torch.as_tensor(np.asarray(heatmaps, dtype=np.float64))
    n = len(h)
    r, c = torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)
    present = torch.as_tensor(has_patch, dtype=torch.bool)
    positive = h.clamp_min(0).flatten(1)
    total = positive.sum(1)
    gw = h.shape[-1]
    own = positive.gather(1, (r * gw + c)[:, None]).squeeze(1)
    own_share = torch.where(present & (total > 0), own / torch.where(total > 0, total, 1.0), torch.nan)
    com_row, com_col = centre_of_mass(h)
    distance = torch.where(present, torch.hypot(com_row - r, com_col - c), torch.nan)
    counts = cause_counts(h, share).double()
    defined = ~torch.isnan(relevance_concentration(h)[:, -1])
    values = {
        "cause_patches": torch.where(defined, counts, torch.nan).numpy(),
        "own_patch_share": own_share.numpy(),
        "nonlocal_mass": torch.where(present, mass_outside(h, r, c, radius), torch.nan).numpy(),
        "relevance_distance": distance.numpy(),
        "activation_agreement": (
            spearman(torch.as_tensor(activation, dtype=torch.float64), h).numpy()
            if activation is not None else np.full(n, np.nan)
        ),
    }
    return Locality(values)


def cause_mask(heatmap: np.ndarray, share: float = 0.5, count: int | None = None) -> np.ndarray:
    """The cause patches of one heatmap ``[gh, gw]``: its ``count`` first patches, or those holding ``share``."""
    h = torch.as_tensor(np.asarray(heatmap, dtype=np.float64))[None]
    return cause_masks(h, share, top_k=count)[0].numpy()
