"""The JumpReLU SAE: ``z = ReLU(pre) * [pre > threshold]``, one threshold per latent."""

from __future__ import annotations

from typing import Any

import torch

from .base import BaseSAE

__all__ = ["JumpReLUSAE"]


class JumpReLUSAE(BaseSAE):
    """Sparse autoencoder whose latent ``j`` is ``pre_j`` where ``pre_j > threshold_j`` (and positive), else 0.

    ``z = ReLU(pre) * [pre > threshold]`` with ``pre = W_e (norm(h) - b_d) + b_e``. This is SAELens'
    ``jumprelu`` (also what SAELens saves a BatchTopK training as), dictionary_learning's
    ``JumpReluAutoEncoder`` and, with one threshold shared by every latent, the inference mode of BatchTopK
    SAEs (saev, dictionary_learning). See :class:`~cafe_sae.base.BaseSAE` for the other parameters.

    Parameters
    ----------
    d_in, d_sae : int
        Sizes.
    threshold_inclusive : bool
        Keep latents with ``pre >= threshold`` instead of ``pre > threshold`` (overcomplete's ``JumpSAE``).
    **kwargs
        As in :class:`~cafe_sae.base.BaseSAE`.

    Attributes
    ----------
    threshold : torch.nn.Parameter
        ``[d_sae]`` thresholds.
    """

    architecture = "jumprelu"
    parameter_names = ("W_e", "b_e", "threshold", "b_d", "W_d", "b_h")

    def __init__(self, d_in: int, d_sae: int, *, threshold_inclusive: bool = False, **kwargs: Any) -> None:
        super().__init__(d_in, d_sae, **kwargs)
        self.threshold_inclusive = bool(threshold_inclusive)

    def _open(self, pre: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        return pre >= threshold if self.threshold_inclusive else pre > threshold

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre) * self._open(pre, self.threshold).to(pre.dtype)

    def _activate_latents(self, h: torch.Tensor, latents: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        threshold = self.threshold.index_select(0, latents)
        return torch.relu(pre) * self._open(pre, threshold).to(pre.dtype)

    @torch.no_grad()
    def normalize_decoder_(self) -> "JumpReLUSAE":
        """As :meth:`BaseSAE.normalize_decoder_`, scaling the thresholds with their latents."""
        self.threshold.mul_(self._decoder_norms_or_one())
        return super().normalize_decoder_()

    def _config_fields(self) -> dict[str, Any]:
        return {"threshold_inclusive": self.threshold_inclusive}
