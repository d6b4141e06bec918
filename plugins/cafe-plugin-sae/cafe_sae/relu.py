"""The ReLU SAE: ``z = ReLU(W_e (norm(h) - b_d) + b_e)``."""

from __future__ import annotations

import torch

from .base import BaseSAE

__all__ = ["ReluSAE"]


class ReluSAE(BaseSAE):
    """Sparse autoencoder with a ReLU: ``z = ReLU(W_e (norm(h) - b_d) + b_e)``, ``x_hat = W_d z + b_h``.

    Trained with ``||h - h_hat||^2 + lambda * ||z||_1`` (:meth:`~cafe_sae.base.BaseSAE.loss`). See
    :class:`~cafe_sae.base.BaseSAE` for the parameters and methods.

    Examples
    --------
    >>> sae = ReluSAE.random_init(8, 32, seed=0, layer=3)
    >>> z = sae.encode(torch.randn(5, 8))
    >>> z.shape
    torch.Size([5, 32])
    """

    architecture = "relu"

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    def _activate_latents(self, h: torch.Tensor, latents: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)
