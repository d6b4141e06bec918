"""The target function ``f(x) -> z`` that every attributor and metric explains or scores."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from .context import RunContext
from .records import Target

if TYPE_CHECKING:
    from .protocols import SAE, Backbone

__all__ = ["Target", "TargetFunction"]


class TargetFunction:
    """``f(x) -> z``: a batch of targets as a differentiable function of the input images.

    Row ``i`` of the input is explained with respect to latent ``latents[i]`` read at token ``positions[i]``,
    so one image may appear in several rows to explain several of its latents at once.

    Parameters
    ----------
    backbone : Backbone
        The model; only blocks ``0..layer`` run.
    sae : SAE
        The dictionary; only the rows of ``W_e`` named by ``latents`` are used.
    layer : int
        Block whose output the SAE reads.
    latents, positions : torch.Tensor
        Long tensors ``[B]``, kept on the CPU whatever device they come from (row bookkeeping mixes them
        with CPU masks; the functions move them to the activations' device where they index them).
    """

    def __init__(
        self,
        backbone: Backbone,
        sae: SAE,
        layer: int,
        latents: torch.Tensor | Sequence[int],
        positions: torch.Tensor | Sequence[int],
    ) -> None:
        self.backbone = backbone
        self.sae = sae
        self.layer = int(layer)
        self.latents = torch.as_tensor(latents, dtype=torch.long).reshape(-1).cpu()
        self.positions = torch.as_tensor(positions, dtype=torch.long).reshape(-1).cpu()
        if self.latents.shape != self.positions.shape:
            raise ValueError(
                f"latents and positions must have the same length, got {len(self.latents)} and "
                f"{len(self.positions)}"
            )

    @classmethod
    def for_targets(cls, backbone: Backbone, sae: SAE, targets: Sequence[Target]) -> "TargetFunction":
        """Build the function of a list of targets that share one layer."""
        layers = {t.layer for t in targets}
        if len(layers) != 1:
            raise ValueError(f"targets of one TargetFunction must share a layer, got layers {sorted(layers)}")
        return cls(backbone, sae, layers.pop(), [t.latent for t in targets], [t.position for t in targets])

    def __len__(self) -> int:
        return len(self.latents)

    @property
    def targets(self) -> list[Target]:
        """The rows as :class:`Target` objects."""
        return [Target(self.layer, int(n), int(k)) for n, k in zip(self.latents, self.positions)]

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[B, T, D]`` at the SAE's layer."""
        return self.backbone.forward_to(x, self.layer)

    def from_tokens(self, h: torch.Tensor, sources: torch.Tensor | None = None) -> torch.Tensor:
        """``z [B]`` from hidden states ``[N, T, D]``.

        Row ``i`` reads token ``positions[i]`` of ``h[sources[i]]``; by default of ``h[i]`` (``N = B``). Several
        rows may read one forward pass this way, each its own latent at its own token.
        """
        rows = torch.arange(h.shape[0], device=h.device) if sources is None else sources.to(h.device)
        picked = h[rows, self.positions.to(h.device)]
        return self.sae.encode_latents(picked, self.latents.to(h.device))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``z [B]``: the target latent of each row of ``x [B, 3, H, W]``."""
        if x.shape[0] != len(self):
            raise ValueError(f"input has {x.shape[0]} rows but the target function has {len(self)}")
        return self.from_tokens(self.tokens(x))

    def select(self, index: torch.Tensor | Sequence[int] | slice) -> "TargetFunction":
        """The function restricted to some rows (``index`` may live on any device)."""
        if isinstance(index, torch.Tensor):
            index = index.cpu()
        return TargetFunction(self.backbone, self.sae, self.layer, self.latents[index], self.positions[index])

    def tile(self, copies: int) -> "TargetFunction":
        """The rows repeated as ``copies`` whole copies, copy-major (the layout of stacked path samples)."""
        return self.select(torch.arange(copies * len(self)) % len(self))

    def pre_activation_from_tokens(self, h: torch.Tensor) -> torch.Tensor:
        """The latents' pre-activations ``[B]`` (before the SAE's nonlinearity) from hidden states ``[B, T, D]``.

        Raises
        ------
        TypeError
            If the SAE has no ``pre_activation_latents(h, latents)``.
        """
        method = getattr(self.sae, "pre_activation_latents", None)
        if not callable(method):
            raise TypeError(
                f"{type(self.sae).__name__} has no pre_activation_latents(h, latents), so its pre-activations "
                "cannot be explained; explain the latent itself instead"
            )
        rows = torch.arange(h.shape[0], device=h.device)
        return method(h[rows, self.positions.to(h.device)], self.latents.to(h.device))

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """The latents' pre-activations ``[B]`` of ``x [B, 3, H, W]``."""
        return self.pre_activation_from_tokens(self.tokens(x))

    def repeat_interleave(self, repeats: int) -> "TargetFunction":
        """Each row repeated ``repeats`` times in place (for step-wise curves over one target)."""
        return TargetFunction(
            self.backbone,
            self.sae,
            self.layer,
            self.latents.repeat_interleave(repeats),
            self.positions.repeat_interleave(repeats),
        )

    def batched(self, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        """``self(x)`` computed in chunks of ``batch_size`` rows without gradients."""
        with torch.no_grad():
            return torch.cat([self.select(rows)(x[rows]) for rows in RunContext(batch_size=batch_size).chunks(len(x))])
