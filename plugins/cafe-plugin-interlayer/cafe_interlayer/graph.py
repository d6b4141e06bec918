"""The concept graph: a latent at the top layer, explained by latents of each earlier SAE, recursively.

For a top latent ``n`` read at token ``k_i`` of images ``i = 1..I``, relevance is measured in shares of the
latent: each image's readout is ``z_n(k_i) / z_n(k_i)``, so it starts with relevance 1. One level down, an
interlayer attributor splits it over the latents of the next SAE (and its error node, decoder bias, unread
tokens and absorbed biases). A latent ``j`` of that layer receives relevance ``R_i(t, j)`` at each token
``t``; its score is ``sum_{i,t} R_i(t, j) / I``. The layer is **pruned to a share**: the fewest latents, by
score, whose positive scores hold at least ``share`` of the positive relevance reaching the layer's latents
(``max_nodes`` caps them; the graph records whether the cap bound). Each kept latent is then explained in
turn, read where relevance reached it: the readout ``sum_t (R_i(t, j) / z'_j(t)) z'_j(t)`` carries exactly
its relevance, and gradient x input, LRP and integrated gradients are linear in their output, so its
relevance is split further down without being counted twice (all parents' relevance into ``j`` is passed on
in one readout). Edge ``p -> j`` holds the part of ``j``'s score that came from ``p``. The error node is a
sink: what the SAE misses at a layer is reported there and not explained further.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from cafe_core.protocols import RunContext

from .readout import LatentReadout
from .splice import Source

__all__ = ["ConceptGraph", "Level", "build_concept_graph", "keep_share"]


def keep_share(scores: np.ndarray, share: float, max_nodes: int | None = None) -> tuple[np.ndarray, bool]:
    """The fewest indices, by descending score, whose positive scores hold at least ``share`` of all positive ones.

    Parameters
    ----------
    scores : numpy.ndarray
        ``[n]`` scores; only positive ones are kept or counted.
    share : float
        In ``(0, 1]``.
    max_nodes : int, optional
        Keep at most this many.

    Returns
    -------
    kept : numpy.ndarray
        Indices, highest score first (ties: lower index first).
    capped : bool
        Whether ``max_nodes`` stopped the selection before the share was reached.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.where(scores > 0, scores, 0.0)
    total = positive.sum()
    if total <= 0:
        return np.zeros(0, dtype=np.int64), False
    order = np.argsort(-positive, kind="stable")
    order = order[positive[order] > 0]
    cumulative = np.cumsum(positive[order])
    # the first position where the running sum reaches the share (a relative tolerance absorbs rounding)
    needed = int(np.searchsorted(cumulative, share * total * (1 - 1e-12), side="left")) + 1
    needed = min(needed, len(order))
    if max_nodes is not None and needed > max_nodes:
        return order[:max_nodes], True
    return order[:needed], False


@dataclass(frozen=True)
class Level:
    """One SAE of the graph: the SAE, the block it reads and its label."""

    sae: Any
    layer: int
    label: str


@dataclass
class ConceptGraph:
    """Nodes, weighted edges and per-layer summaries (see :meth:`to_json`)."""

    top: dict[str, Any]
    attributor: str
    share: float
    max_nodes: int | None
    nodes: list[dict[str, Any]] = field(default_factory=list)
    edges: list[dict[str, Any]] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Plain data: ``top``, ``attributor``, ``share``, ``max_nodes``, ``nodes`` (``id``, ``label``, ``layer``,
        ``latent`` or ``None`` for an error node, ``kind``, ``relevance``), ``edges`` (``source``, ``target``,
        ``weight``) and ``layers`` (per SAE below the top: the relevance of the parents explained, the signed and
        the positive relevance reaching its latents, the share the kept latents hold, whether ``max_nodes``
        bound, the error node's, decoder bias', unread tokens' and absorbed relevance, and the strongest latents
        before pruning). With a conservative attributor (CP-LRP) the parents' relevance equals the sum of the
        latents', the error's, the bias', the unread tokens' and the absorbed relevance."""
        return {"top": self.top, "attributor": self.attributor, "share": self.share, "max_nodes": self.max_nodes,
                "nodes": self.nodes, "edges": self.edges, "layers": self.layers}

    def node(self, node_id: str) -> dict[str, Any]:
        """The node with this id."""
        return next(n for n in self.nodes if n["id"] == node_id)


def node_id(label: str, latent: int | None) -> str:
    """``"label:latent"``, or ``"label:error"`` for a layer's error node."""
    return f"{label}:{'error' if latent is None else latent}"


def build_concept_graph(
    backbone: Any,
    levels: Sequence[Level],
    latent: int,
    x: torch.Tensor,
    positions: Sequence[int],
    method: Any,
    context: RunContext,
    *,
    share: float = 0.8,
    max_nodes: int | None = 12,
    attributor: str = "",
    image_ids: Sequence[str] = (),
    table_size: int = 10,
) -> ConceptGraph:
    """The concept graph of latent ``latent`` of ``levels[0]``, read at ``positions[i]`` of image ``x[i]``.

    Parameters
    ----------
    backbone : Backbone
        The model (a ViT with ``model.blocks``).
    levels : sequence of Level
        The top SAE first, then the SAEs below it, each at an earlier layer than the one before.
    latent : int
        The top latent.
    x : torch.Tensor
        ``[I, 3, H, W]`` images where it is active at ``positions``.
    positions : sequence of int
        ``[I]`` the token read on each image.
    method : interlayer attributor
        See :mod:`cafe_interlayer.methods`.
    context : RunContext
        Batch size, device, dtype, seed.
    share, max_nodes : float, int or None
        Pruning of each layer (see :func:`keep_share`).
    attributor, image_ids : str, sequence of str
        Recorded in the graph.
    table_size : int
        Latents listed per layer before pruning.

    Returns
    -------
    ConceptGraph
    """
    layers = [lv.layer for lv in levels]
    if any(a <= b for a, b in zip(layers, layers[1:])):
        raise ValueError(f"levels must go from the top layer down, got layers {layers}")
    top = levels[0]
    n_images = len(x)
    n_tokens = backbone.forward_to(x[:1], top.layer).shape[1] if n_images else 0
    with torch.no_grad():
        values = LatentReadout.at_positions(top.sae, top.layer, [latent] * n_images, positions, n_tokens)(
            backbone.forward_to(x, top.layer)).double().cpu()
    if (values <= 0).any():
        raise ValueError(f"latent {latent} is not active at the given tokens of every image: {values.tolist()}")
    weights = torch.zeros(n_images, n_tokens, dtype=torch.float64)
    weights[torch.arange(n_images), torch.as_tensor(list(positions))] = 1 / values
    graph = ConceptGraph(
        top={"label": top.label, "layer": top.layer, "latent": int(latent), "images": list(image_ids),
             "positions": [int(p) for p in positions], "values": values.tolist()},
        attributor=attributor, share=float(share), max_nodes=max_nodes,
    )
    graph.nodes.append({"id": node_id(top.label, latent), "label": top.label, "layer": top.layer,
                        "latent": int(latent), "kind": "latent", "relevance": 1.0})
    frontier = {int(latent): weights}
    current = top
    for level in levels[1:]:
        if not frontier:
            break
        source = Source(backbone, level.sae, level.layer, level.label)
        frontier = _descend(graph, backbone, current, source, frontier, x, method, context, share, max_nodes,
                            table_size)
        current = level
    return graph


def _descend(graph, backbone, parent_level, source, frontier, x, method, context, share, max_nodes, table_size):
    """Explain every frontier latent by the source's latents; add the kept ones; return the next frontier."""
    n_images = len(x)
    parents, images, rows = [], [], []
    for parent, weights in frontier.items():
        for i in range(n_images):
            if weights[i].abs().sum() > 0:
                parents.append(parent)
                images.append(i)
                rows.append(weights[i])
    readout = LatentReadout(parent_level.sae, parent_level.layer, parents, torch.stack(rows))
    index = torch.as_tensor(images)
    attribution = method.attribute(source, readout, x[index], context)
    relevance = attribution.latents.double().cpu()
    activations = attribution.activations.double().cpu()
    incoming = torch.zeros(n_images, *relevance.shape[1:], dtype=torch.float64)
    incoming.index_add_(0, index, relevance)
    scores = (incoming.sum((0, 1)) / n_images).numpy()
    kept, capped = keep_share(scores, share, max_nodes)
    positive = float(np.where(scores > 0, scores, 0).sum())
    mean = lambda t: float(t.double().sum() / n_images)  # noqa: E731 - a share of the top latent per image
    error_id = node_id(source.label, None)
    for j in kept:
        graph.nodes.append({"id": node_id(source.label, int(j)), "label": source.label, "layer": source.layer,
                            "latent": int(j), "kind": "latent", "relevance": float(scores[j])})
    graph.nodes.append({"id": error_id, "label": source.label, "layer": source.layer, "latent": None,
                        "kind": "error", "relevance": mean(attribution.error)})
    by_parent: dict[int, list[int]] = {}
    for row, parent in enumerate(parents):
        by_parent.setdefault(parent, []).append(row)
    for parent, members in by_parent.items():
        per_latent = relevance[members].sum((0, 1)) / n_images
        for j in kept:
            if per_latent[j] != 0:
                graph.edges.append({"source": node_id(parent_level.label, parent), "target": node_id(source.label, int(j)),
                                    "weight": float(per_latent[j])})
        graph.edges.append({"source": node_id(parent_level.label, parent), "target": error_id,
                            "weight": mean(attribution.error[members])})
    order = np.argsort(-np.abs(scores), kind="stable")[:table_size]
    graph.layers.append({
        "label": source.label, "layer": source.layer, "parents": len(by_parent),
        "parent_relevance": float(sum(graph.node(node_id(parent_level.label, p))["relevance"] for p in by_parent)),
        "latent_relevance": float(scores.sum()), "positive_latent_relevance": positive, "kept": len(kept),
        "kept_share": float(scores[kept].sum() / positive) if positive > 0 else None,
        "capped": bool(capped), "error": mean(attribution.error), "bias": mean(attribution.bias),
        "uncovered": mean(attribution.uncovered), "absorbed": mean(attribution.absorbed),
        "strongest": [{"latent": int(j), "relevance": float(scores[j]), "kept": bool(j in set(kept.tolist()))}
                      for j in order if scores[j] != 0],
    })
    next_frontier = {}
    for j in kept:
        weights = torch.zeros(n_images, len(source.positions[0]) + len(source.positions[1]), dtype=torch.float64)
        first = {}
        for row, i in enumerate(images):
            first.setdefault(i, row)
        for i, row in first.items():
            z = activations[row, :, j]
            share_of = torch.where(z > 0, incoming[i, :, j] / z.clamp_min(1e-300), torch.zeros_like(z))
            weights[i, torch.as_tensor(attribution.covered)] = share_of
        next_frontier[int(j)] = weights
    return next_frontier
