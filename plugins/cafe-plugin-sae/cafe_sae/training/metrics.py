"""Quality of an SAE on a set of activations: variance explained, sparsity and dead latents."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

__all__ = ["EvalMetrics", "evaluate_sae", "fraction_of_variance_explained", "mean_l0"]


def fraction_of_variance_explained(h: torch.Tensor, h_hat: torch.Tensor) -> float:
    """``1 - sum ||h - h_hat||^2 / sum ||h - mean(h)||^2`` over the rows of ``h [N, d_in]``.

    ``mean(h)`` is the per-feature mean over the rows, so predicting that mean scores 0 and a perfect
    reconstruction scores 1. Computed in float64.

    Raises
    ------
    ValueError
        If the shapes differ or the rows of ``h`` do not vary (the fraction is undefined).
    """
    if h.shape != h_hat.shape or h.dim() != 2:
        raise ValueError(f"h and h_hat must both be [N, d_in], got {list(h.shape)} and {list(h_hat.shape)}")
    h64, h_hat64 = h.double(), h_hat.double()
    total = (h64 - h64.mean(dim=0)).pow(2).sum()
    if total == 0:
        raise ValueError("the activations do not vary, so the fraction of variance explained is undefined")
    return float(1.0 - (h64 - h_hat64).pow(2).sum() / total)


def mean_l0(z: torch.Tensor) -> float:
    """Mean number of active latents (``z > 0``) per row of ``z [..., d_sae]``."""
    return float((z > 0).sum(dim=-1).double().mean())


@dataclass
class EvalMetrics:
    """An SAE's quality on a set of tokens.

    Attributes
    ----------
    fve : float
        Fraction of variance explained (see :func:`fraction_of_variance_explained`).
    l0 : float
        Mean number of active latents per token.
    mse : float
        Mean squared error per token, ``mean_i ||h_i - h_hat_i||^2`` (as in the training loss).
    dead_latents : int
        Latents active on none of the tokens.
    dead_fraction : float
        ``dead_latents / d_sae``.
    tokens : int
        Number of tokens evaluated.
    """

    fve: float
    l0: float
    mse: float
    dead_latents: int
    dead_fraction: float
    tokens: int

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return asdict(self)


@torch.no_grad()
def evaluate_sae(sae: Any, h: torch.Tensor, *, batch_size: int = 4096) -> EvalMetrics:
    """Reconstruct ``h [N, d_in]`` with ``sae`` in batches and measure the result.

    Parameters
    ----------
    sae : BaseSAE
        Anything with ``forward(h) -> (h_hat, z)`` and ``d_sae``.
    h : torch.Tensor
        Tokens, on the SAE's device; at least two distinct rows.
    batch_size : int
        Rows per forward pass.
    """
    h64 = h.double()
    total = (h64 - h64.mean(dim=0)).pow(2).sum()
    if len(h) == 0 or total == 0:
        raise ValueError("evaluation needs tokens that vary; got none, or all equal")
    error = torch.zeros((), dtype=torch.float64, device=h.device)
    active = torch.zeros(sae.d_sae, dtype=torch.bool, device=h.device)
    count = torch.zeros((), dtype=torch.float64, device=h.device)
    for i in range(0, len(h), batch_size):
        chunk = h[i : i + batch_size]
        h_hat, z = sae(chunk)
        error += (chunk.double() - h_hat.double()).pow(2).sum()
        on = z > 0
        active |= on.any(dim=0)
        count += on.sum()
    dead = int((~active).sum())
    return EvalMetrics(
        fve=float(1.0 - error / total),
        l0=float(count / len(h)),
        mse=float(error / len(h)),
        dead_latents=dead,
        dead_fraction=dead / sae.d_sae,
        tokens=len(h),
    )
