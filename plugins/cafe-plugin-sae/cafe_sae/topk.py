"""The TopK SAE: ``z = ReLU(TopK(W_e (h - b_d) + b_e))``."""

from __future__ import annotations

from typing import Any

import torch

from .base import BaseSAE

__all__ = ["TopKSAE"]


class TopKSAE(BaseSAE):
    """Sparse autoencoder that keeps the ``k`` largest pre-activations of each row, then applies a ReLU.

    ``z = ReLU(TopK_k(W_e (h - b_d) + b_e))``, ``h_hat = W_d z + b_h``: the other ``d_sae - k``
    latents are zero. See :class:`~cafe_sae.base.BaseSAE` for the other parameters and methods.

    Parameters
    ----------
    d_in, d_sae : int
        Sizes.
    k : int
        Number of latents kept per row, ``1 <= k <= d_sae``.
    **kwargs
        ``layer``, ``site``, ``extra``, ``device``, ``dtype`` as in :class:`~cafe_sae.base.BaseSAE`.

    Notes
    -----
    :meth:`encode_latents` must know whether the latent is among the ``k`` largest, so it computes the full
    pre-activation to find the top ``k`` (without gradient); the value and its gradient then flow through
    the selected row of ``W_e`` only.

    :meth:`~cafe_sae.base.BaseSAE.normalize_decoder_` rescales each latent by its decoder column norm, which
    can change which ``k`` latents are largest: it preserves the function only when those norms are equal
    (use it as a projection step while training, not on a trained checkpoint).
    """

    architecture = "topk"

    def __init__(self, d_in: int, d_sae: int, *, k: int, **kwargs: Any) -> None:
        super().__init__(d_in, d_sae, **kwargs)
        if not 1 <= int(k) <= self.d_sae:
            raise ValueError(f"k must lie in [1, d_sae={self.d_sae}], got {k}")
        self.k = int(k)

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:
        values, indices = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))

    def _activate_latents(self, h: torch.Tensor, latents: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            top = self.pre_activation(h).topk(self.k, dim=-1).indices
            kept = (top == latents[:, None]).any(dim=-1)
        return torch.where(kept, torch.relu(pre), torch.zeros_like(pre))

    def _config_fields(self) -> dict[str, Any]:
        return {"k": self.k}
