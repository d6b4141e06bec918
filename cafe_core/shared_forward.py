"""Forward each distinct image once and read every target that looks at it from the same activations.

A batch of targets often repeats images: several latents of one image, the heatmaps of several attributors
for one target, the curve points of different rankings that change the same patches. The latent of a row
depends only on the image it is read on, so such rows can share one forward pass up to the SAE's layer, each
reading its own latent at its own token (:meth:`cafe_core.target.TargetFunction.from_tokens`). Callers find
the repeated images with :func:`cafe_core.gradients.identical_rows`.
"""

from __future__ import annotations

from typing import Callable

import torch

from .context import RunContext
from .target import TargetFunction

__all__ = ["latents_on_shared_images"]


def latents_on_shared_images(
    readers: TargetFunction,
    image_of_reader: torch.Tensor,
    n_images: int,
    make_images: Callable[[slice], torch.Tensor],
    context: RunContext,
) -> torch.Tensor:
    """``z`` of every reader, each read on its image, with every image forwarded once.

    Parameters
    ----------
    readers : TargetFunction
        ``P`` rows: the latent and token each reader reads.
    image_of_reader : torch.Tensor
        ``[P]`` the image (in ``range(n_images)``) each reader reads.
    n_images : int
        How many distinct images there are.
    make_images : callable
        ``make_images(slice)`` builds the model inputs ``[len, 3, H, W]`` of that range of images; called once
        per chunk of at most ``context.batch_size`` images.
    context : RunContext

    Returns
    -------
    torch.Tensor
        ``z [P]``, without gradients.
    """
    order = torch.argsort(image_of_reader, stable=True)
    # the readers of image u are order[ends[u - 1]:ends[u]]
    ends = torch.searchsorted(image_of_reader[order], torch.arange(1, n_images + 1, device=image_of_reader.device))
    values: torch.Tensor | None = None
    with torch.no_grad():
        for chunk in context.chunks(n_images):
            first = int(ends[chunk.start - 1]) if chunk.start else 0
            which = order[first : int(ends[chunk.stop - 1])]
            h, reading = _tokens_read(readers.select(which), make_images(chunk))
            z = reading.from_tokens(h, image_of_reader[which] - chunk.start)
            if values is None:
                values = torch.empty(len(readers), dtype=z.dtype, device=z.device)
            values[which.to(z.device)] = z
    return values


def _tokens_read(readers: TargetFunction, images: torch.Tensor) -> tuple[torch.Tensor, TargetFunction]:
    """The hidden states the readers read, and the readers with their positions into them.

    Only the readers' distinct tokens ``[n, P, D]`` where the backbone offers ``forward_to_tokens`` (its last
    block then skips the rows nobody reads), else every token ``[n, T, D]``.
    """
    backbone = readers.backbone
    if not callable(getattr(backbone, "forward_to_tokens", None)):
        return readers.tokens(images), readers
    positions, index = torch.unique(readers.positions, return_inverse=True)
    h = backbone.forward_to_tokens(images, readers.layer, positions.to(images.device))
    return h, TargetFunction(backbone, readers.sae, readers.layer, readers.latents, index)
