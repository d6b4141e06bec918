"""The target of an interlayer attribution: a latent of a later SAE, read at one token or several."""

from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["LatentReadout"]


class LatentReadout:
    """``f(h)[b] = sum_t weights[b, t] * z_{latents[b]}(h[b, t])`` for hidden states ``h [B, T, D]`` at ``layer``.

    A one-hot ``weights`` row reads one latent at one token (a target ``z_n(L, k)``). A row spread over
    tokens reads the latent where relevance reached it, which is how the concept graph passes relevance
    on to the next layer down: gradient x input, LRP and integrated gradients are linear in the output,
    so explaining the weighted sum splits its relevance among the earlier latents.

    Parameters
    ----------
    sae : SAE
        The target SAE (only the rows of ``W_e`` named by ``latents`` are read).
    layer : int
        The block whose output it reads.
    latents : sequence of int
        ``[B]``.
    weights : torch.Tensor
        ``[B, T]`` over the whole token sequence.
    """

    def __init__(self, sae: Any, layer: int, latents: torch.Tensor | Sequence[int], weights: torch.Tensor) -> None:
        self.sae = sae
        self.layer = int(layer)
        self.latents = torch.as_tensor(latents, dtype=torch.long).reshape(-1)
        self.weights = torch.as_tensor(weights)
        if self.weights.dim() != 2 or self.weights.shape[0] != len(self.latents):
            raise ValueError(f"weights must be [B, T] with B = {len(self.latents)}, got {list(self.weights.shape)}")

    @classmethod
    def at_positions(cls, sae: Any, layer: int, latents: Sequence[int], positions: Sequence[int],
                     n_tokens: int, scale: torch.Tensor | Sequence[float] | None = None) -> "LatentReadout":
        """One latent at one token per row (optionally times ``scale[b]``)."""
        positions_ = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
        weights = torch.zeros(len(positions_), n_tokens, dtype=torch.float64)
        values = torch.ones(len(positions_), dtype=torch.float64) if scale is None else torch.as_tensor(scale).double()
        weights[torch.arange(len(positions_)), positions_] = values
        return cls(sae, layer, latents, weights)

    def __len__(self) -> int:
        return len(self.latents)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """``f [B]`` from hidden states ``[B, T, D]``; only the tokens with a non-zero weight are encoded."""
        weights = self.weights.to(h.device, h.dtype)
        rows, tokens = torch.nonzero(weights, as_tuple=True)
        values = self.sae.encode_latents(h[rows, tokens], self.latents.to(h.device)[rows])
        return h.new_zeros(h.shape[0]).index_add(0, rows, weights[rows, tokens] * values)

    def select(self, index: torch.Tensor | Sequence[int] | slice) -> "LatentReadout":
        """The readout restricted to some rows."""
        return LatentReadout(self.sae, self.layer, self.latents[index], self.weights[index])

    def repeat_interleave(self, repeats: int) -> "LatentReadout":
        """Each row repeated ``repeats`` times in place."""
        return LatentReadout(self.sae, self.layer, self.latents.repeat_interleave(repeats),
                             self.weights.repeat_interleave(repeats, dim=0))
