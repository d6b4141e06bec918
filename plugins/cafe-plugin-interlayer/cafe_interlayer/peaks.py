"""Where each latent fires most over a dataset: the images and tokens of its largest activations."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from .splice import covered_positions

__all__ = ["Peaks", "find_peaks"]


@dataclass
class Peaks:
    """The ``count`` largest activations of every latent of one SAE over the images streamed.

    Attributes
    ----------
    values : torch.Tensor
        ``[count, d_sae]`` largest activation per image (over the tokens the SAE reads), best first; 0 where a
        latent was active on fewer images.
    images : torch.Tensor
        ``[count, d_sae]`` dataset indices of those images.
    positions : torch.Tensor
        ``[count, d_sae]`` the token position of each.
    """

    values: torch.Tensor
    images: torch.Tensor
    positions: torch.Tensor

    def top(self, latent: int, count: int | None = None) -> list[tuple[int, int, float]]:
        """``(image index, position, value)`` of the latent's active peaks, best first."""
        rows = []
        for r in range(self.values.shape[0] if count is None else min(count, self.values.shape[0])):
            value = float(self.values[r, latent])
            if value > 0:
                rows.append((int(self.images[r, latent]), int(self.positions[r, latent]), value))
        return rows


def find_peaks(backbone: Any, saes: list[Any], dataset: Any, n_images: int, context: Any, count: int = 4,
               progress: bool | None = None) -> list[Peaks]:
    """One pass over the first ``n_images`` images: the ``count`` best images of every latent of every SAE.

    Parameters
    ----------
    backbone : Backbone
        The model.
    saes : list of SAE
        Each read at its own ``layer`` over the tokens it was trained on.
    dataset : Dataset
        Indexable images.
    n_images : int
        Images streamed.
    context : RunContext
        Batch size, device and dtype.
    count : int
        Images kept per latent (one image counts once, at its best token; ties keep the earlier image).
    progress : bool, optional
        Show a progress bar (default: when stderr is a terminal).

    Returns
    -------
    list of Peaks
        One per SAE, in order.
    """
    show = sys.stderr.isatty() if progress is None else progress
    state = []
    for sae in saes:
        covered, _ = covered_positions(backbone, sae, sae.layer)
        empty = torch.zeros(0, sae.d_sae)
        state.append([torch.as_tensor(covered), empty, empty.long(), empty.long()])
    with tqdm(total=n_images, desc="peaks", unit="image", disable=not show) as bar:
        for start in range(0, n_images, context.batch_size):
            stop = min(start + context.batch_size, n_images)
            x = backbone.preprocess([dataset[i].image for i in range(start, stop)]).to(context.device, context.dtype)
            with torch.no_grad():
                hidden = {layer: backbone.forward_to(x, layer) for layer in sorted({s.layer for s in saes})}
                for sae, entry in zip(saes, state):
                    covered, values, images, positions = entry
                    codes = sae.encode(hidden[sae.layer][:, covered.to(x.device)]).float().cpu()
                    best, where = codes.max(dim=1)
                    all_values = torch.cat([values, best])
                    all_images = torch.cat([images, torch.arange(start, stop)[:, None].expand_as(best)])
                    all_positions = torch.cat([positions, covered[where]])
                    k = min(count, len(all_values))
                    # a stable sort keeps the earlier image among equal values
                    order = torch.sort(all_values, dim=0, descending=True, stable=True).indices[:k]
                    entry[1:] = [all_values.gather(0, order), all_images.gather(0, order),
                                 all_positions.gather(0, order)]
            bar.update(stop - start)
    return [Peaks(values, images, positions) for _, values, images, positions in state]
