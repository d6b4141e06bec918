"""The SAE a training run starts from: random weights and a decoder bias at the centre of the data."""

from __future__ import annotations

from typing import Any

import torch

from ..base import BaseSAE

__all__ = ["BIAS_INITS", "geometric_median", "initial_sae"]

BIAS_INITS = ("median", "mean", "zero")


@torch.no_grad()
def geometric_median(points: torch.Tensor, *, iterations: int = 100, tolerance: float = 1e-7) -> torch.Tensor:
    """The point minimising the sum of Euclidean distances to the rows of ``points [N, d]`` (Weiszfeld).

    Starts from the mean and stops when a step moves less than ``tolerance`` times the data's scale. Computed
    in float64; returned in the input's dtype.
    """
    x = points.double()
    estimate = x.mean(dim=0)
    scale = float(x.std(dim=0).norm()) or 1.0
    for _ in range(iterations):
        distance = (x - estimate).norm(dim=1)
        # A point that coincides with the estimate gets a large but finite weight instead of 1 / 0.
        weight = 1.0 / distance.clamp_min(1e-12 * scale)
        update = (weight[:, None] * x).sum(dim=0) / weight.sum()
        moved = float((update - estimate).norm())
        estimate = update
        if moved <= tolerance * scale:
            break
    return estimate.to(points.dtype)


def initial_sae(
    architecture: str,
    d_in: int,
    d_sae: int,
    *,
    k: int | None,
    seed: int,
    layer: int | None,
    tokens: str,
    sample: torch.Tensor | None,
    bias_init: str = "median",
) -> BaseSAE:
    """A random SAE (:meth:`~cafe_sae.base.BaseSAE.random_init`) whose biases ``b_d`` and ``b_h`` sit at
    the geometric median (or the mean) of ``sample``.

    Setting ``b_h`` too makes the reconstruction of an all-zero code the centre of the data, so training
    starts from a reconstruction that already explains the offset of the activations.
    """
    from ..architectures import ARCHITECTURES

    kwargs: dict[str, Any] = {"k": k} if architecture == "topk" else {}
    sae = ARCHITECTURES[architecture].random_init(d_in, d_sae, seed=seed, layer=layer, tokens=tokens, **kwargs)
    if bias_init != "zero" and sample is not None and len(sample):
        centre = geometric_median(sample) if bias_init == "median" else sample.double().mean(dim=0)
        with torch.no_grad():
            sae.b_d.copy_(centre)
            sae.b_h.copy_(centre)
    return sae
