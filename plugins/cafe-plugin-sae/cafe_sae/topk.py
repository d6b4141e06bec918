"""The TopK SAE: ``z = ReLU(TopK(pre))``, or ``TopK(pre)`` without the ReLU."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .base import BaseSAE

__all__ = ["TopKSAE"]


class TopKSAE(BaseSAE):
    """Sparse autoencoder that keeps the ``k`` largest pre-activations of each row.

    ``z = ReLU(TopK_k(pre))`` with ``pre = W_e (norm(h) - b_d) + b_e``, ``x_hat = W_d z + b_h``: the other
    ``d_sae - k`` latents are zero. See :class:`~cafe_sae.base.BaseSAE` for the other parameters and methods.

    Parameters
    ----------
    d_in, d_sae : int
        Sizes.
    k : int
        Number of latents kept per row, ``1 <= k <= d_sae``.
    relu_after_topk : bool
        Whether the kept values go through a ReLU (True: SAELens, ViT-Prisma, dictionary_learning,
        overcomplete, cafe). saev's TopK keeps negative values as they are (False).
    rescale_by_decoder_norm : bool
        SAELens ``rescale_acts_by_decoder_norm``: the pre-activation of latent ``j`` is multiplied by the norm
        of decoder column ``j`` before the top ``k`` are chosen (and the latents keep that scale), and the
        decoder divides it out again.
    **kwargs
        ``layer``, ``tokens``, ``site``, ``normalization``, ``extra``, ``device``, ``dtype`` as in
        :class:`~cafe_sae.base.BaseSAE`.

    Notes
    -----
    :meth:`encode_latents` must know whether the latent is among the ``k`` largest, so it computes the full
    pre-activation to find the top ``k`` (without gradient); the value and its gradient then flow through
    the selected row of ``W_e`` only.

    :meth:`~cafe_sae.base.BaseSAE.normalize_decoder_` rescales each latent by its decoder column norm, which
    can change which ``k`` latents are largest: it preserves the function only when those norms are equal or
    ``rescale_by_decoder_norm`` is set (use it as a projection step while training, not on a trained
    checkpoint).
    """

    architecture = "topk"

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        k: int,
        relu_after_topk: bool = True,
        rescale_by_decoder_norm: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(d_in, d_sae, **kwargs)
        self.k = int(k)
        self.relu_after_topk = bool(relu_after_topk)
        self.rescale_by_decoder_norm = bool(rescale_by_decoder_norm)

    def pre_activation(self, h: torch.Tensor) -> torch.Tensor:
        pre = super().pre_activation(h)
        return pre * self.W_d.norm(dim=0) if self.rescale_by_decoder_norm else pre

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.rescale_by_decoder_norm:
            z = z / self.W_d.norm(dim=0)
        return F.linear(z, self.W_d, self.b_h)

    def _pre_activation_latents(self, h: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        pre = super()._pre_activation_latents(h, latents)
        if self.rescale_by_decoder_norm:
            pre = pre * self.W_d.index_select(1, latents).norm(dim=0)
        return pre

    def _kept(self, values: torch.Tensor) -> torch.Tensor:
        return torch.relu(values) if self.relu_after_topk else values

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:
        values, indices = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, self._kept(values))

    def _activate_latents(self, h: torch.Tensor, latents: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            top = self.pre_activation(h).topk(self.k, dim=-1).indices
            kept = (top == latents[:, None]).any(dim=-1)
        return torch.where(kept, self._kept(pre), torch.zeros_like(pre))

    def _config_fields(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "relu_after_topk": self.relu_after_topk,
            "rescale_by_decoder_norm": self.rescale_by_decoder_norm,
        }
