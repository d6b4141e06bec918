"""Feature pages: what a latent means, by the images where it fires most and those where it is most caused.

For each latent, one pass over the dataset keeps two rankings of ``count`` images each, in bounded memory
(a heap per ranking and latent):

* **activation**: the image's largest value of the latent over its patch tokens (the class token for a
  class-token SAE), as SAE dashboards show;
* **relevance**: the positive relevance the iERF of the latent at that same token puts on the input patches
  (the sum of the heatmap's positive values), the relevance maximisation of concept relevance propagation
  (CRP) applied to the latent's own explanation. The activation counts everything that moves the latent,
  biases and what its ReLU lets through included; the relevance counts what input patches cause, so images
  where strong evidence is partly cancelled, or where the latent rides on its bias, rank differently.

Each selected image is then drawn with its activation map, its iERF with the cause patches outlined, and
the cause patches cropped and zoomed.
"""

from __future__ import annotations

import heapq
import itertools
import json
import pathlib
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cafe_core.protocols import TargetFunction

from . import markup
from .cache import FigureCache, digest
from .gallery import GalleryRow, gallery_figure
from .locality import cause_mask, fired_cells
from .errors import ReportError
from .rebuild import display_images

__all__ = ["FeatureOptions", "Ranked", "rank_images", "write_feature_pages"]


@dataclass(order=True)
class Ranked:
    """An image where a latent is active: its score under one ranking, and where the latent was read."""

    score: float
    index: int = field(compare=False)
    image_id: str = field(compare=False)
    position: int = field(compare=False)
    activation: float = field(compare=False)
    relevance: float = field(compare=False)


@dataclass
class FeatureOptions:
    """Settings of :func:`write_feature_pages` (see ``cafe features --help``)."""

    latents: list[int]
    out: pathlib.Path
    layer: int | None = None
    count: int = 6
    attributor: str | None = None
    images: int | None = None
    cause_share: float = 0.5
    progress: bool | None = None


class _TopN:
    """The ``n`` largest items pushed so far (a min-heap; ties keep the earlier image)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.heap: list[tuple[float, int, Ranked]] = []
        self.counter = itertools.count()

    def push(self, item: Ranked) -> None:
        entry = (item.score, -next(self.counter), item)
        if len(self.heap) < self.n:
            heapq.heappush(self.heap, entry)
        elif entry[:2] > self.heap[0][:2]:
            heapq.heapreplace(self.heap, entry)

    def best(self) -> list[Ranked]:
        return [entry[2] for entry in sorted(self.heap, key=lambda e: e[:2], reverse=True)]


def choose_sae(plan: Any, layer: int | None) -> Any:
    """The SAE of the spec at ``layer`` (or its only SAE).

    Raises
    ------
    ReportError
        If the layer is ambiguous or missing.
    """
    layers = [sae.layer for sae in plan.saes]
    matching = [sae for sae in plan.saes if layer is None or sae.layer == layer]
    if layer is None and len(plan.saes) > 1:
        raise ReportError(f"the spec has SAEs at layers {layers}; choose one with --layer")
    if not matching:
        raise ReportError(f"the spec has no SAE at layer {layer}; its SAEs are at layers {layers}")
    if len(matching) > 1:
        raise ReportError(f"the spec has several SAEs at layer {layer}; keep one of them in the spec for this command")
    return matching[0]


PREFERRED_ATTRIBUTORS = ("attnlrp", "cp_lrp", "integrated_gradients")
"""Registered attributors chosen first when none is named, the most faithful in the paper's tests first."""


def choose_attributor(plan: Any, label: str | None) -> tuple[str, Any]:
    """The attributor that draws the iERFs: ``label``; else the spec's first of :data:`PREFERRED_ATTRIBUTORS`;
    else its first one that is neither ``activation_map`` nor ``random``.

    Raises
    ------
    ReportError
        If the spec has no such attributor.
    """
    names = {entry.label: entry.registration.name for entry in plan.resolved.get("attributors", [])}
    if label is not None:
        if label not in plan.attributors:
            raise ReportError(f"the spec has no attributor {label!r}; it has {sorted(plan.attributors)}")
        return label, plan.attributors[label]
    for preferred in PREFERRED_ATTRIBUTORS:
        for candidate, attributor in plan.attributors.items():
            if names.get(candidate) == preferred:
                return candidate, attributor
    for candidate, attributor in plan.attributors.items():
        if names.get(candidate) not in ("activation_map", "random"):
            return candidate, attributor
    raise ReportError("the spec has no causal attributor (only activation_map or random); add one, e.g. attnlrp")


def rank_images(plan: Any, sae: Any, attributor: Any, latents: list[int], count: int, n_images: int,
                progress: bool = False) -> dict[int, dict[str, list[Ranked]]]:
    """Stream the first ``n_images`` images once and keep, per latent, the top ``count`` by each ranking."""
    backbone, context = plan.backbone, plan.context
    n_prefix = len(backbone.prefix_tokens)
    prefix = getattr(sae, "tokens", "patch") == "cls"
    tops = {n: {"activation": _TopN(count), "relevance": _TopN(count)} for n in latents}
    latent_index = torch.as_tensor(latents, dtype=torch.long, device=context.device)
    with tqdm(total=n_images, desc="cafe features", unit="image", disable=not progress) as bar:
        for start in range(0, n_images, context.batch_size):
            indices = list(range(start, min(start + context.batch_size, n_images)))
            items = [plan.dataset[i] for i in indices]
            x = backbone.preprocess([item.image for item in items]).to(context.device, context.dtype)
            with torch.no_grad():
                h = backbone.forward_to(x, sae.layer)
                tokens = h[:, :1] if prefix else h[:, n_prefix:]
                b, t, d = tokens.shape
                flat = tokens.reshape(b * t, 1, d).expand(-1, len(latents), -1).reshape(-1, d)
                codes = sae.encode_latents(flat, latent_index.repeat(b * t)).reshape(b, t, len(latents))
                values, where = codes.max(dim=1)
            positions = (where + (0 if prefix else n_prefix)).cpu()
            values = values.cpu()
            rows = [(i, j) for i in range(b) for j in range(len(latents)) if values[i, j] > 0]
            relevance = _relevance(attributor, backbone, sae, x, rows, latents, positions, context)
            for (i, j), rel in zip(rows, relevance):
                ranked = dict(index=indices[i], image_id=items[i].image_id, position=int(positions[i, j]),
                              activation=float(values[i, j]), relevance=rel)
                tops[latents[j]]["activation"].push(Ranked(score=ranked["activation"], **ranked))
                tops[latents[j]]["relevance"].push(Ranked(score=rel, **ranked))
            bar.update(len(indices))
    return {n: {name: top.best() for name, top in ranking.items()} for n, ranking in tops.items()}


def _relevance(attributor, backbone, sae, x, rows, latents, positions, context) -> list[float]:
    """The positive iERF relevance of each ``(image row, latent column)`` pair at the latent's token."""
    if not rows:
        return []
    target = TargetFunction(backbone, sae, sae.layer, [latents[j] for _, j in rows],
                            [int(positions[i, j]) for i, j in rows])
    xs = x[torch.as_tensor([i for i, _ in rows], device=x.device)]
    out = []
    for chunk in context.chunks(len(rows)):
        heatmap = attributor.attribute(target.select(chunk), xs[chunk], context).heatmap.detach()
        out += heatmap.clamp_min(0).flatten(1).sum(1).double().cpu().tolist()
    return out


def write_feature_pages(plan: Any, options: FeatureOptions) -> pathlib.Path:
    """Rank the dataset's images for each latent and write the feature pages.

    Returns
    -------
    pathlib.Path
        ``<out>/index.html``; one ``latent-<layer>-<n>.html`` per latent beside it, ``figures/`` and
        ``features.json`` (both rankings of every latent).
    """
    sae = choose_sae(plan, options.layer)
    bad = [n for n in options.latents if not 0 <= n < sae.d_sae]
    if bad:
        raise ReportError(f"latents {bad} do not exist in the SAE at layer {sae.layer} ({sae.d_sae} latents)")
    label, attributor = choose_attributor(plan, options.attributor)
    limit = plan.spec.run.limit
    n_images = len(plan.dataset)
    for bound in (limit, options.images):
        if bound is not None:
            n_images = min(n_images, bound)
    show = sys.stderr.isatty() if options.progress is None else options.progress
    rankings = rank_images(plan, sae, attributor, options.latents, options.count, n_images, show)
    out = pathlib.Path(options.out)
    figures = FigureCache(out / "figures")
    pages = []
    for latent in options.latents:
        pages.append(_latent_page(plan, sae, label, attributor, latent, rankings[latent], options, figures, out))
    links = "".join(f'<li><a href="{markup.escape(name)}">latent {n}</a></li>'
                    for n, name in zip(options.latents, pages))
    body = (f"<h1>Feature pages: layer {sae.layer}</h1>"
            f'<p class="muted">{n_images} images streamed; iERFs by {markup.escape(label)}; cause patches hold '
            f"{options.cause_share:.0%} of the positive relevance.</p><ul>{links}</ul>")
    markup.write_page(out / "index.html", markup.page("cafe feature pages", body))
    (out / "features.json").write_text(json.dumps({
        "layer": sae.layer, "attributor": label, "images": n_images, "count": options.count,
        "latents": {str(n): {name: [vars(r) for r in ranked] for name, ranked in rankings[n].items()}
                    for n in options.latents},
    }, indent=1) + "\n")
    figures.remove_unused()
    return out / "index.html"


def _latent_page(plan, sae, label, attributor, latent, ranking, options, figures, out) -> str:
    backbone = plan.backbone
    prefix = getattr(sae, "tokens", "patch") == "cls"
    columns = []
    for name, title in (("activation", "Top activating images"), ("relevance", "Most relevant images (iERF)")):
        ranked = ranking[name]
        rows = _gallery_rows(plan, sae, attributor, latent, ranked, options.cause_share, prefix)
        stem = f"latent-{sae.layer}-{latent}-{name}"
        png = figures.get(stem, digest([(r.label, r.image, r.activation, r.relevance, r.cause, r.fired) for r in rows]),
                          lambda path: gallery_figure(path, rows, tuple(backbone.patch_size), title))
        columns.append(f"<div><h2>{markup.escape(title)}</h2>"
                       + markup.figure(f"figures/{png.name}", f"{title} of latent {latent}") + "</div>")
    note = ('<p class="note">A class-token latent has no patch of its own: the activation map has nothing to show, '
            "and the iERF is its only localisation.</p>" if prefix else "")
    body = (f'<p><a href="index.html">All latents</a></p><h1>Latent {latent} · layer {sae.layer}</h1>'
            f'<p class="muted">Left: the images where it fires most. Right: those where its iERF '
            f"({markup.escape(label)}) "
            "holds the most positive relevance. Each row: the image (fired token dotted), the activation map, the "
            "iERF with the cause patches outlined, and the cause patches cropped and zoomed.</p>"
            + note + '<div class="side">' + "".join(columns) + "</div>")
    name = f"latent-{sae.layer}-{latent}.html"
    markup.write_page(out / name, markup.page(f"cafe latent {latent}", body))
    return name


def _gallery_rows(plan, sae, attributor, latent, ranked: list[Ranked], share: float, prefix: bool) -> list[GalleryRow]:
    if not ranked:
        return []
    backbone, context = plan.backbone, plan.context
    x = backbone.preprocess([plan.dataset[r.index].image for r in ranked]).to(context.device, context.dtype)
    target = TargetFunction(backbone, sae, sae.layer, [latent] * len(ranked), [r.position for r in ranked])
    relevance = torch.cat([attributor.attribute(target.select(c), x[c], context).heatmap.detach().double().cpu()
                           for c in context.chunks(len(ranked))]).numpy()
    activation = None if prefix else _activation_maps(backbone, sae, latent, x, context)
    rows_, cols_, present = fired_cells(backbone, sae.layer, [r.position for r in ranked])
    pixels = display_images(backbone, x)
    return [
        GalleryRow(
            label=f"{r.image_id}\nz={r.activation:.3g}  R+={r.relevance:.3g}",
            image=pixels[i],
            activation=None if activation is None else activation[i],
            relevance=relevance[i],
            cause=cause_mask(relevance[i], share),
            fired=(int(rows_[i]), int(cols_[i])) if present[i] else None,
        )
        for i, r in enumerate(ranked)
    ]


def _activation_maps(backbone, sae, latent: int, x: torch.Tensor, context) -> np.ndarray:
    gh, gw = backbone.grid_size
    n_prefix = len(backbone.prefix_tokens)
    maps = []
    with torch.no_grad():
        for chunk in context.chunks(len(x)):
            h = backbone.forward_to(x[chunk], sae.layer)[:, n_prefix:]
            flat = h.reshape(-1, h.shape[-1])
            z = sae.encode_latents(flat, torch.full((len(flat),), latent, device=flat.device))
            maps.append(z.reshape(-1, gh, gw).double().cpu())
    return torch.cat(maps).numpy()
