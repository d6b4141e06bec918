"""A seeded random ranking of the patches: the floor any faithfulness table should beat."""

from __future__ import annotations

import hashlib
import struct

import torch

from cafe_core.protocols import Attribution, RunContext, TargetFunction

__all__ = ["RandomRanking", "row_seed"]


def row_seed(seed: int, layer: int, latent: int, position: int, image: torch.Tensor | None = None) -> int:
    """A 63-bit seed from the run seed and what a row explains (a BLAKE2b digest, stable across platforms).

    Parameters
    ----------
    seed : int
        The run's seed (``RunContext.seed``).
    layer, latent, position : int
        The row's target.
    image : torch.Tensor, optional
        The row's input; when given, its bytes (as float32 on the CPU) are mixed in.

    Returns
    -------
    int
        A seed in ``[0, 2**63)``.
    """
    digest = hashlib.blake2b(struct.pack("<4q", int(seed), int(layer), int(latent), int(position)), digest_size=8)
    if image is not None:
        digest.update(image.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return int.from_bytes(digest.digest(), "little") >> 1


class RandomRanking:
    """Heatmap of independent uniform random values: a random ranking of the patches.

    Parameters
    ----------
    per_image : bool
        Also mix the row's input into its seed (see below).

    Notes
    -----
    Row ``b`` draws its ``gh x gw`` values from a CPU generator seeded with :func:`row_seed` of
    ``context.seed`` and its target (layer, latent, token position), so a row's heatmap depends on neither
    its neighbours in the batch nor the device, and a rerun with the same seed gives the same rankings.

    By default the seed ignores the image: every image explained for the same latent at the same token gets
    the same ranking. The mean of a metric over many images is then one random ranking's score, not an
    average over rankings; vary ``context.seed`` over runs to average rankings too. With
    ``per_image=True`` the bytes of the row's input are mixed into its seed, giving each image its own
    ranking; the ranking then changes with anything that changes the input's bits (its dtype, or a
    preprocessing that rounds differently on another device).

    No model pass is run. ``info`` is empty.
    """

    needs_grad = False
    conserves_relevance = False

    def __init__(self, per_image: bool = False) -> None:
        self.per_image = bool(per_image)

    def attribute(self, target: TargetFunction, x: torch.Tensor, context: RunContext) -> Attribution:
        """Random heatmaps ``[B, gh, gw]`` for the rows of ``x [B, 3, H, W]``.

        Parameters
        ----------
        target : TargetFunction
            The latent and token of each row (they seed the row's values).
        x : torch.Tensor
            Model inputs ``[B, 3, H, W]``; only their number, device and dtype are used, unless
            ``per_image``.
        context : RunContext
            ``seed`` seeds every row.

        Returns
        -------
        Attribution
            ``heatmap [B, gh, gw]`` with values in ``[0, 1)``.
        """
        if len(target) != len(x):
            raise ValueError(f"input has {len(x)} rows but the target function has {len(target)}")
        gh, gw = target.backbone.grid_size
        maps = []
        for i, (latent, position) in enumerate(zip(target.latents.tolist(), target.positions.tolist())):
            image = x[i] if self.per_image else None
            generator = torch.Generator().manual_seed(row_seed(context.seed, target.layer, latent, position, image))
            maps.append(torch.rand(gh, gw, generator=generator, dtype=torch.float64))
        heatmap = torch.stack(maps) if maps else torch.empty(0, gh, gw, dtype=torch.float64)
        return Attribution(heatmap=heatmap.to(device=x.device, dtype=x.dtype))
