"""Weighted sums of input gradients over the points of a path, shared by the rows whose points are the same.

Integrated gradients and GradientSHAP explain a latent by its gradients at ``S`` points between a blank and
the image, each multiplied by a weight and summed. Rows that explain several latents of one image along the
same points (same image, same blank, same start) need those points forwarded only once: the ``K`` latents
then read their own token of the shared activations, and their ``K x S`` vector-Jacobian products run as
one batched backward pass (``torch.autograd.grad(..., is_grads_batched=True)``), as
:func:`cafe_core.gradients.input_gradients` does for a single point.

* ``"rows"``: every row its own points; the points of several rows are packed into passes of at most
  ``batch_size`` images.
* ``"shared"``: rows with identical points share them.
* ``"auto"``: ``"shared"`` for groups of at least :func:`cafe_core.gradients.shared_from` rows, ``"rows"``
  for smaller ones.

Every choice gives the same sums up to floating-point rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from .batching import PATH_BATCHING, check_batching
from .context import RunContext
from .gradients import frozen, identical_rows, shared_from
from .target import TargetFunction

__all__ = ["PointSet", "path_gradients", "path_groups", "readout", "row_values"]

# Reads row values from tokens: ``(tokens [P, D], latents [P]) -> [P]``.
Readout = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class PointSet:
    """Points shared by some rows, made on demand so that no more than one pass of them is held at once.

    Attributes
    ----------
    rows : torch.Tensor
        ``[K]`` the target rows that are explained at these points.
    size : int
        ``S``, the number of points.
    points : callable
        ``points(sl)`` returns the points ``sl`` of the set, ``[n, 3, H, W]``.
    weights : callable
        ``weights(sl)`` returns their weights, broadcastable to ``[n, 3, H, W]``.
    """

    rows: torch.Tensor
    size: int
    points: Callable[[slice], torch.Tensor]
    weights: Callable[[slice], torch.Tensor]


def readout(target: TargetFunction, quantity: str = "post") -> Readout:
    """``(tokens [P, D], latents [P]) -> [P]``: the latent (``"post"``) or its pre-activation (``"pre"``)."""
    if quantity == "post":
        return target.sae.encode_latents
    if quantity == "pre":
        return target.sae.pre_activation_latents
    raise ValueError(f"quantity must be 'post' or 'pre', got {quantity!r}")


def row_values(target: TargetFunction, x: torch.Tensor, context: RunContext, quantity: str = "post") -> torch.Tensor:
    """``[B]``: each row's latent (or pre-activation) at its image, one forward per distinct image.

    Parameters
    ----------
    target : TargetFunction
        The latent and token of each row.
    x : torch.Tensor
        ``[B, 3, H, W]``; identical rows (:func:`cafe_core.gradients.identical_rows`) are forwarded once.
    context : RunContext
        ``batch_size`` bounds the images of a forward pass.
    quantity : {"post", "pre"}
        What is read.
    """
    read = readout(target, quantity)
    first, group = identical_rows(x)
    values = x.new_zeros(len(x))
    with torch.no_grad():
        for chunk in context.chunks(len(first)):
            h = target.tokens(x[first[chunk]])
            rows = torch.nonzero((group >= chunk.start) & (group < chunk.stop)).flatten()
            sources = (group[rows] - chunk.start).to(h.device)
            tokens = h[sources, target.positions[rows].to(h.device)]
            values[rows] = read(tokens, target.latents[rows].to(h.device)).to(values)
    return values


def path_groups(target: TargetFunction, paths: torch.Tensor, batching: str = "auto") -> list[torch.Tensor]:
    """The groups of rows that share their points, each ``[K]`` row indices.

    Parameters
    ----------
    target : TargetFunction
        The rows (their model sets where ``"auto"`` starts sharing).
    paths : torch.Tensor
        ``[B, ...]`` what determines a row's points (its image, blank and start, say): rows with identical
        values share.
    batching : {"auto", "rows", "shared"}
        See the module's description.
    """
    check_batching(batching, PATH_BATCHING)
    if batching == "rows":
        return list(torch.arange(len(paths)).split(1))
    _, group = identical_rows(paths)
    groups = [torch.nonzero(group == g).flatten() for g in range(int(group.max()) + 1)] if len(paths) else []
    if batching == "shared":
        return groups
    least = shared_from(target)
    return [part for rows in groups for part in ([rows] if len(rows) >= least else rows.split(1))]


def _pieces(sets: Sequence[PointSet], batch_size: int) -> Iterator[list[tuple[int, slice]]]:
    """Passes of at most ``batch_size`` points, each a list of ``(set, slice of its points)``."""
    chunk: list[tuple[int, slice]] = []
    room = batch_size
    for i, point_set in enumerate(sets):
        start = 0
        while start < point_set.size:
            stop = min(start + room, point_set.size)
            chunk.append((i, slice(start, stop)))
            room -= stop - start
            start = stop
            if room == 0:
                yield chunk
                chunk, room = [], batch_size
    if chunk:
        yield chunk


def _pairs(sets: Sequence[PointSet], pieces: list[tuple[int, slice]]):
    """``(slot, point, row)`` of every row at every point of a pass: row ``j`` of a set takes slot ``j``."""
    slots, points, rows = [], [], []
    offset = 0
    for i, sl in pieces:
        n, members = sl.stop - sl.start, sets[i].rows
        slots.append(torch.arange(len(members)).repeat_interleave(n))
        points.append((offset + torch.arange(n)).repeat(len(members)))
        rows.append(members.repeat_interleave(n))
        offset += n
    return torch.cat(slots), torch.cat(points), torch.cat(rows)


def _vjp(h: torch.Tensor, leaf: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """``[n_slots, *leaf.shape]``: the vector-Jacobian products of ``h`` for the cotangents ``seeds``."""
    if len(seeds) == 1:  # a plain backward pass skips the batching machinery
        (grad,) = torch.autograd.grad(h, leaf, seeds[0], retain_graph=True, allow_unused=True)
        grad = None if grad is None else grad[None]
    else:
        (grad,) = torch.autograd.grad(h, leaf, seeds, retain_graph=True, is_grads_batched=True, allow_unused=True)
    return leaf.new_zeros(len(seeds), *leaf.shape) if grad is None else grad


def _pass(
    target: TargetFunction, read: Readout, sets: Sequence[PointSet], pieces: list[tuple[int, slice]],
    out: torch.Tensor, batch_size: int,
) -> None:
    """One forward of the points of ``pieces``; adds each row's weighted gradients there to ``out``."""
    leaf = torch.cat([sets[i].points(sl) for i, sl in pieces]).detach().requires_grad_(True)
    weights = torch.cat([sets[i].weights(sl).expand(sl.stop - sl.start, *leaf.shape[1:]) for i, sl in pieces])
    slots, points, rows = _pairs(sets, pieces)
    with torch.enable_grad():
        h = target.tokens(leaf)
    positions = target.positions[rows].to(h.device)
    token = h.detach()[points.to(h.device), positions].requires_grad_(True)
    with torch.enable_grad():
        (cotangent,) = torch.autograd.grad(read(token, target.latents[rows].to(h.device)).sum(), token)
    # The batched backward holds n_slots copies of the pass's gradients: at most batch_size images in all.
    per_call = max(1, batch_size // len(leaf))
    for start in range(0, int(slots.max()) + 1, per_call):
        picked = torch.nonzero((slots >= start) & (slots < start + per_call)).flatten()
        slot = slots[picked] - start
        seeds = h.new_zeros(int(slot.max()) + 1, *h.shape)
        seeds[slot.to(h.device), points[picked].to(h.device), positions[picked]] = cotangent[picked].to(h)
        grads = _vjp(h, leaf, seeds)[slot.to(h.device), points[picked].to(h.device)]
        out.index_add_(0, rows[picked].to(out.device), (grads * weights[points[picked].to(h.device)]).to(out))


def path_gradients(
    target: TargetFunction, sets: Sequence[PointSet], context: RunContext, *, quantity: str = "post",
    like: torch.Tensor,
) -> torch.Tensor:
    """For every row ``r`` of every set, ``sum_s weights[s] * df_r/dx`` at the set's points ``s``.

    Parameters
    ----------
    target : TargetFunction
        The latent and token of each row.
    sets : sequence of PointSet
        Disjoint groups of rows and the points they are explained at (see :func:`path_groups`).
    context : RunContext
        ``batch_size`` bounds the images of a forward pass, and the slots times images of a batched
        backward pass.
    quantity : {"post", "pre"}
        Differentiate the latent ``z`` or its pre-activation.
    like : torch.Tensor
        ``[B, 3, H, W]``: the shape, dtype and device of the result (rows in no set stay zero).

    Returns
    -------
    torch.Tensor
        ``[B, 3, H, W]`` the weighted sums.

    Notes
    -----
    Sets with more rows come first, so that a pass packs sets of similar sizes and wastes few slots (a set
    of ``K`` rows takes ``K`` slots of the batched backward; a pass takes as many as its largest set). The
    backbone's and the SAE's parameters do not require grad during the call
    (:func:`cafe_core.gradients.frozen`).
    """
    read = readout(target, quantity)
    out = torch.zeros_like(like)
    ordered = sorted(sets, key=lambda s: -len(s.rows))
    with frozen(getattr(target.backbone, "model", None), target.sae):
        for pieces in _pieces(ordered, context.batch_size):
            _pass(target, read, ordered, pieces, out, context.batch_size)
    return out
