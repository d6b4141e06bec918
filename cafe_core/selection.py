"""Choosing what to explain on each image: which latents, read at which token.

The selection rule is part of the measurement (a latent read at its own top token is local by construction
far more often than one read at a background token), so every rule here is explicit in the spec and recorded
with the results.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .errors import SpecError
from .protocols import Target, layer_grid

__all__ = ["SelectedTarget", "fixed_position", "position_name", "select_targets"]


@dataclass(frozen=True)
class SelectedTarget:
    """A target chosen on one image, with the latent's value there.

    ``status`` is ``"explained"`` or ``"inactive"`` (value at most ``min_activation``: nothing to explain).
    """

    image_row: int
    target: Target
    position_name: str
    activation: float
    status: str


def fixed_position(position: int | str, backbone: Any, layer: int = 0) -> int | None:
    """Sequence index of a fixed position spec, or ``None`` for ``"argmax"``.

    Raises
    ------
    SpecError
        For a prefix token the backbone does not have, or an index past the sequence.
    """
    prefixes = tuple(backbone.prefix_tokens)
    gh, gw = layer_grid(backbone, layer)
    n_tokens = len(prefixes) + gh * gw
    if position == "argmax":
        return None
    if isinstance(position, str):
        if position in prefixes:
            return prefixes.index(position)
        available = ", ".join(repr(p) for p in ("argmax", *prefixes))
        raise SpecError(
            [("targets.position", f"this backbone has no {position!r} token; use one of {available} or an index")]
        )
    if not 0 <= position < n_tokens:
        raise SpecError(
            [("targets.position", f"index {position} is past the {n_tokens} tokens of this backbone (0..{n_tokens - 1})")]
        )
    return int(position)


def position_name(position: int, backbone: Any, layer: int = 0) -> str:
    """``"cls"``, ``"reg0"``... for prefix tokens, ``"patch(r,c)"`` (in the layer's token grid) otherwise."""
    prefixes = tuple(backbone.prefix_tokens)
    if position < len(prefixes):
        return prefixes[position]
    row, col = divmod(position - len(prefixes), layer_grid(backbone, layer)[1])
    return f"patch({row},{col})"


def _stable_seed(seed: int, image_id: str, layer: int) -> int:
    return (seed * 1_000_003 + zlib.crc32(f"{image_id}|{layer}".encode())) % (2**63)


def select_targets(
    codes: torch.Tensor,
    *,
    image_ids: Sequence[str],
    layer: int,
    backbone: Any,
    latents: Sequence[int] | None,
    select: str | None,
    count: int | None,
    position: int | str,
    min_activation: float,
    seed: int,
) -> list[SelectedTarget]:
    """Pick the targets of a batch of images from their SAE codes.

    Parameters
    ----------
    codes : torch.Tensor
        ``[B, T, d_sae]`` latents of every token (or ``[B, T, len(latents)]`` when ``latents`` is given).
    image_ids : sequence of str
        Identifiers of the ``B`` images (they seed the ``"random"`` rule, so a draw does not depend on
        batching).
    latents, select, count, position, min_activation
        The ``[targets]`` section of the spec.
    seed : int
        Run seed.

    Returns
    -------
    list of SelectedTarget
        Explicit latents are all returned (inactive ones flagged); ``select`` rules return active ones only.
    """
    n_prefix = len(backbone.prefix_tokens)
    fixed = fixed_position(position, backbone, layer)
    if fixed is None:
        per_latent, argmax = codes[:, n_prefix:, :].max(dim=1)
        positions = argmax + n_prefix
    else:
        per_latent = codes[:, fixed, :]
        positions = torch.full_like(per_latent, fixed, dtype=torch.long)
    chosen: list[SelectedTarget] = []
    for b, image_id in enumerate(image_ids):
        values = per_latent[b]
        if latents is not None:
            columns = list(range(len(latents)))
            names = list(latents)
        elif select == "top":
            active = int((values > min_activation).sum())
            columns = torch.topk(values, k=min(count or 0, active)).indices.tolist()
            names = columns
        else:
            candidates = torch.nonzero(values > min_activation).flatten()
            generator = torch.Generator().manual_seed(_stable_seed(seed, image_id, layer))
            order = torch.randperm(len(candidates), generator=generator)[: count or 0]
            columns = sorted(candidates[order].tolist())
            names = columns
        for column, latent in zip(columns, names):
            value = float(values[column])
            pos = int(positions[b, column])
            chosen.append(
                SelectedTarget(
                    image_row=b,
                    target=Target(layer, int(latent), pos),
                    position_name=position_name(pos, backbone, layer),
                    activation=value,
                    status="explained" if value > min_activation else "inactive",
                )
            )
    return chosen
