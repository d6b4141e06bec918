"""Choosing what to explain on each image: which latents, read at which token.

The selection rule is part of the measurement (a latent read at its own top token is local by construction
far more often than one read at a background token), so every rule here is explicit in the spec and recorded
with the results.
"""

from __future__ import annotations

import zlib
from typing import Any, Sequence

import torch

from .errors import SpecError
from .geometry import layer_grid
from .records import TargetKey, TargetRecord

__all__ = ["activation_scales", "rule_position", "rule_values", "position_name", "select_targets"]


def rule_position(token: int | str, backbone: Any, layer: int = 0) -> int | None:
    """The position in the token sequence that a rule's ``token`` names, or ``None`` for ``"argmax"``.

    Raises
    ------
    SpecError
        For a prefix token the backbone does not have, or a position past the sequence.
    """
    prefixes = tuple(backbone.prefix_tokens)
    gh, gw = layer_grid(backbone, layer)
    n_tokens = len(prefixes) + gh * gw
    if token == "argmax":
        return None
    if isinstance(token, str):
        if token in prefixes:
            return prefixes.index(token)
        available = ", ".join(repr(p) for p in ("argmax", *prefixes))
        raise SpecError(
            [("targets.token", f"this backbone has no {token!r} token; use one of {available} or a position")]
        )
    if not 0 <= token < n_tokens:
        raise SpecError(
            [("targets.token", f"position {token} is past the {n_tokens} tokens of this backbone (0..{n_tokens - 1})")]
        )
    return int(token)


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
    sae: str,
    layer: int,
    backbone: Any,
    latents: Sequence[int] | None,
    select: str | None,
    count: int | None,
    position: int | None,
    min_activation: float,
    seed: int,
    floors: torch.Tensor | None = None,
) -> list[TargetRecord]:
    """Pick the targets of a batch of images from their SAE codes.

    Parameters
    ----------
    codes : torch.Tensor
        ``[B, T, d_sae]`` latents of every token (or ``[B, T, len(latents)]`` when ``latents`` is given).
    image_ids : sequence of str
        Identifiers of the ``B`` images (they seed the ``"random"`` rule, so a draw does not depend on
        batching).
    sae : str
        The label of the SAE the codes come from (part of every target's key).
    latents, select, count, min_activation
        The ``[targets]`` section of the spec.
    position : int or None
        The rule's token as resolved by :func:`rule_position` (``None`` for ``"argmax"``: each latent's top
        patch token).
    seed : int
        Run seed.
    floors : torch.Tensor, optional
        ``[d_sae]`` (or ``[len(latents)]``): per latent, the value below which an active target is recorded as
        ``"below_floor"`` and not explained (the rule's ``min_relative_activation`` times the latent's scale,
        see :func:`activation_scales`). The floors change no choice of latents, only their status.

    Returns
    -------
    list of TargetRecord
        Explicit latents are all returned (inactive ones flagged); ``select`` rules return active ones only
        (those below their floor flagged).
    """
    n_prefix = len(backbone.prefix_tokens)
    fixed = position
    if fixed is None:
        per_latent, argmax = codes[:, n_prefix:, :].max(dim=1)  # the values of rule_values
        positions = argmax + n_prefix
    else:
        per_latent = codes[:, fixed, :]
        positions = torch.full_like(per_latent, fixed, dtype=torch.long)
    chosen: list[TargetRecord] = []
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
            if value <= min_activation:
                status = "inactive"
            elif floors is not None and value < float(floors[column]):
                status = "below_floor"
            else:
                status = "explained"
            chosen.append(
                TargetRecord(
                    key=TargetKey(image_id, sae, layer, int(latent), pos),
                    position_name=position_name(pos, backbone, layer),
                    activation=value,
                    status=status,
                )
            )
    return chosen


def rule_values(codes: torch.Tensor, position: int | None, n_prefix: int) -> torch.Tensor:
    """``[B, d]``: each latent's value where a rule reads it (its top patch token for ``position=None``)."""
    if position is None:
        return codes[:, n_prefix:, :].amax(dim=1)
    return codes[:, position, :]


def activation_scales(values: torch.Tensor, scales: torch.Tensor | None = None) -> torch.Tensor:
    """Each latent's largest value over the rows of ``values [B, d]``, combined with ``scales`` seen before.

    The scale of a latent for a selection rule is its largest value, over every image of the run, at the
    token the rule reads: the denominator of the rule's ``min_relative_activation``. Call this once per batch
    of images, passing the previous result, to get the maximum over all of them.
    """
    found = values.detach().amax(dim=0).to(torch.float64).cpu()
    return found if scales is None else torch.maximum(scales, found)
