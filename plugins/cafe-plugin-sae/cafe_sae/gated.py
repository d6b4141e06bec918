"""The gated SAE: a gate decides which latents fire, a rescaled copy of the encoder decides how much."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import BaseSAE

__all__ = ["GatedSAE"]


class GatedSAE(BaseSAE):
    """Gated sparse autoencoder (Rajamanoharan et al. 2024), as SAELens, ViT-Prisma and dictionary_learning
    define it::

        x    = norm(h) - b_d
        gate = W_e x + b_gate                                # which latents fire: gate > 0
        pre  = exp(r_mag) * (W_e x) + b_mag                  # the magnitude pre-activation
        z    = [gate > 0] * ReLU(pre)

    There is no ``b_e``. :meth:`pre_activation` returns the magnitude pre-activation ``pre``; the gate is a step
    function, so the gradient of a latent flows through ``pre`` alone. See :class:`~cafe_sae.base.BaseSAE` for
    the other parameters.

    Attributes
    ----------
    b_gate, r_mag, b_mag : torch.nn.Parameter
        ``[d_sae]`` gate bias, log-scale of the magnitude path, magnitude bias.
    """

    architecture = "gated"
    parameter_names = ("W_e", "b_gate", "r_mag", "b_mag", "b_d", "W_d", "b_h")

    def gate(self, h: torch.Tensor) -> torch.Tensor:
        """The gate pre-activation ``W_e (norm(h) - b_d) + b_gate`` ``[..., d_sae]``; latents fire where it is > 0."""
        return F.linear(self._encoder_input_rows(h), self.W_e, self.b_gate)

    def pre_activation(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(self._encoder_input_rows(h), self.W_e * self.r_mag.exp()[:, None], self.b_mag)

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        x = self._encoder_input_rows(h)
        fires = F.linear(x, self.W_e, self.b_gate) > 0
        magnitude = F.linear(x, self.W_e * self.r_mag.exp()[:, None], self.b_mag)
        return fires.to(magnitude.dtype) * torch.relu(magnitude)

    def _pre_activation_latents(self, h: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        rows = self.W_e.index_select(0, latents) * self.r_mag.index_select(0, latents).exp()[:, None]
        return torch.einsum("nd,nd->n", self._encoder_input_rows(h), rows) + self.b_mag.index_select(0, latents)

    def _activate_latents(self, h: torch.Tensor, latents: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        x = self._encoder_input_rows(h)
        rows = self.W_e.index_select(0, latents)
        fires = torch.einsum("nd,nd->n", x, rows) + self.b_gate.index_select(0, latents) > 0
        return fires.to(pre.dtype) * torch.relu(pre)

    @torch.no_grad()
    def normalize_decoder_(self) -> "GatedSAE":
        """Give every decoder column unit norm, rescaling ``W_e``, ``b_gate`` and ``b_mag`` so that each latent
        grows by its column's norm and ``decode(encode(h))`` is unchanged. Returns ``self``."""
        scale = self._decoder_norms_or_one()
        self.W_d.div_(scale)
        self.W_e.mul_(scale[:, None])
        self.b_gate.mul_(scale)
        self.b_mag.mul_(scale)
        return self
