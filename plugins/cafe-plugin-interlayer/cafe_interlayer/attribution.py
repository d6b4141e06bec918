"""What an interlayer attributor returns: relevance over (source latent, token), and every other node's share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["InterlayerAttribution", "concatenate"]


@dataclass
class InterlayerAttribution:
    """Relevance of a batch of targets over the latents of a source SAE and the other nodes of its path.

    Attributes
    ----------
    latents : torch.Tensor
        ``[N, Tc, d_sae]`` relevance of source latent ``j`` at covered token ``covered[t]``.
    activations : torch.Tensor
        ``[N, Tc, d_sae]`` the source latents themselves (``z'``).
    error : torch.Tensor
        ``[N, Tc]`` relevance of the reconstruction error at each covered token.
    bias : torch.Tensor
        ``[N]`` relevance of the reconstruction of no latents (the decoder bias) over the covered tokens.
    uncovered : torch.Tensor
        ``[N, Tu]`` relevance of the tokens the source SAE does not read (``uncovered_positions``).
    absorbed : torch.Tensor
        ``[N]`` relevance taken elsewhere: by the biases of the blocks between the two layers and the target
        SAE's encoder (LRP), or the value at the integration path's start (integrated gradients).
    value : torch.Tensor
        ``[N]`` the target (the readout) on the image.
    covered, uncovered_positions : list of int
        Token positions of the second axis of ``latents`` and of ``uncovered``.
    info : dict
        Per-row diagnostics, each ``[N]`` (``conservation_error`` = ``value - total()``...).
    """

    latents: torch.Tensor
    activations: torch.Tensor
    error: torch.Tensor
    bias: torch.Tensor
    uncovered: torch.Tensor
    absorbed: torch.Tensor
    value: torch.Tensor
    covered: list[int]
    uncovered_positions: list[int]
    info: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.value)

    def per_latent(self) -> torch.Tensor:
        """``[N, d_sae]`` each source latent's relevance summed over tokens."""
        return self.latents.sum(1)

    def total(self) -> torch.Tensor:
        """``[N]`` the relevance of every node: latents, error, decoder bias, uncovered tokens and absorbed."""
        return (self.latents.flatten(1).sum(1) + self.error.sum(1) + self.bias + self.uncovered.sum(1)
                + self.absorbed)

    def with_conservation(self) -> "InterlayerAttribution":
        """Add ``info["conservation_error"] = value - total()``."""
        self.info["conservation_error"] = self.value - self.total()
        return self

    def top_pairs(self, row: int, count: int = 10) -> list[dict[str, Any]]:
        """The ``count`` (latent, token) pairs of row ``row`` with the largest ``|relevance|``, as a sparse table.

        Returns
        -------
        list of dict
            ``latent``, ``position``, ``activation`` and ``relevance`` per pair, largest ``|relevance|`` first;
            pairs with zero relevance are left out.
        """
        flat = self.latents[row].flatten()
        order = torch.sort(flat.abs(), descending=True, stable=True).indices[:count]
        d_sae = self.latents.shape[-1]
        rows = []
        for index in order.tolist():
            if flat[index] == 0:
                break
            t, j = divmod(index, d_sae)
            rows.append({"latent": j, "position": self.covered[t],
                         "activation": float(self.activations[row, t, j]), "relevance": float(flat[index])})
        return rows

    def top_latents(self, row: int, count: int = 10) -> list[dict[str, Any]]:
        """The ``count`` source latents of row ``row`` with the largest ``|relevance|`` summed over tokens.

        Returns
        -------
        list of dict
            ``latent``, ``relevance`` (over tokens), ``tokens`` (where it is active), ``top_position`` (its most
            relevant token).
        """
        per = self.latents[row]
        summed = per.sum(0)
        order = torch.sort(summed.abs(), descending=True, stable=True).indices[:count]
        rows = []
        for j in order.tolist():
            if summed[j] == 0:
                break
            t = int(per[:, j].abs().argmax())
            rows.append({"latent": j, "relevance": float(summed[j]),
                         "tokens": int((self.activations[row, :, j] > 0).sum()), "top_position": self.covered[t]})
        return rows


def concatenate(parts: list[InterlayerAttribution]) -> InterlayerAttribution:
    """Rows of several attributions (of one source) stacked in order."""
    first = parts[0]
    cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
    info = {key: torch.cat([p.info[key] for p in parts]) for key in first.info}
    return InterlayerAttribution(
        latents=cat("latents"), activations=cat("activations"), error=cat("error"), bias=cat("bias"),
        uncovered=cat("uncovered"), absorbed=cat("absorbed"), value=cat("value"), covered=first.covered,
        uncovered_positions=first.uncovered_positions, info=info,
    )
