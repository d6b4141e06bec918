"""Normalisations some SAEs apply to their input before encoding, and their inverses.

``"none"``
    ``h`` as it is.
``"layer_norm"``
    ``(h - mean(h)) / (std(h) + 1e-5)`` over the features of each row, ``std`` with Bessel's correction. This is
    the formula of SAELens and ViT-Prisma (``normalize_activations = "layer_norm"``); it is not
    :func:`torch.nn.functional.layer_norm`, which divides by ``sqrt(var_biased + eps)``.
``"constant_norm"``
    ``h * sqrt(d_in) / ||h||``: every row rescaled to norm ``sqrt(d_in)`` (SAELens ``constant_norm_rescale``).
``"shift_scale"``
    ``(h - input_mean) / input_scalar`` with a stored mean vector and scalar (saev's data scaling, SAELens'
    ``expected_average_only_in`` scaling factor).

The first three depend on each row alone, so a latent of one token still depends on that token only.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = ["LAYER_NORM_EPS", "NORMALIZATIONS", "RowStatistics", "denormalize", "normalize"]

NORMALIZATIONS = ("none", "layer_norm", "constant_norm", "shift_scale")
LAYER_NORM_EPS = 1e-5


class RowStatistics(NamedTuple):
    """What :func:`denormalize` needs to map a reconstruction back to the input's scale."""

    shift: torch.Tensor | float
    scale: torch.Tensor | float


def normalize(
    h: torch.Tensor,
    kind: str,
    input_mean: torch.Tensor | None = None,
    input_scalar: float | None = None,
) -> tuple[torch.Tensor, RowStatistics]:
    """Normalise activations ``h [..., d_in]``; returns the result and the statistics to undo it.

    Parameters
    ----------
    h : torch.Tensor
        Activations.
    kind : str
        One of :data:`NORMALIZATIONS`.
    input_mean, input_scalar : optional
        The constants of ``"shift_scale"``.
    """
    if kind == "none":
        return h, RowStatistics(0.0, 1.0)
    if kind == "layer_norm":
        mean = h.mean(dim=-1, keepdim=True)
        centred = h - mean
        std = centred.std(dim=-1, keepdim=True)
        return centred / (std + LAYER_NORM_EPS), RowStatistics(mean, std)
    if kind == "constant_norm":
        coefficient = math.sqrt(h.shape[-1]) / h.norm(dim=-1, keepdim=True)
        return h * coefficient, RowStatistics(0.0, 1.0 / coefficient)
    if kind == "shift_scale":
        return (h - input_mean) / input_scalar, RowStatistics(input_mean, input_scalar)
    raise ValueError(f"unknown normalization {kind!r}; expected one of {NORMALIZATIONS}")


def denormalize(x: torch.Tensor, statistics: RowStatistics) -> torch.Tensor:
    """Map ``x`` from the normalised space back to the input's (``x * scale + shift``)."""
    return x * statistics.scale + statistics.shift
