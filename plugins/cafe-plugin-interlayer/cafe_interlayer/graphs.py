"""``cafe graph``: concept graphs of chosen top-layer latents, written as JSON, DOT, PNG and an HTML page.

One pass over the dataset finds where every latent of every SAE of the graph fires most
(:func:`cafe_interlayer.peaks.find_peaks`); each chosen latent is explained on its ``images_per_latent``
best images, read at its best token there, and its graph is built (:func:`build_concept_graph`). Each latent
node is drawn as its feature-page thumbnail: the image where it fires most, with its activation map.
"""

from __future__ import annotations

import json
import pathlib
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import InterlayerError
from .graph import build_concept_graph
from .graph_figure import draw_graph
from .peaks import find_peaks
from .thumbnails import save_thumbnail, thumbnail

__all__ = ["GraphOptions", "choose_method", "write_graphs"]

PREFERRED = ("integrated_gradients", "cp_lrp", "attnlrp", "gradient_x_input")
"""Attributors chosen first for the graph when none is named, the most faithful on the default first
(interlayer insertion, measured: see the plugin's README)."""


@dataclass
class GraphOptions:
    """Settings of :func:`write_graphs` (see ``cafe graph --help``)."""

    out: pathlib.Path
    latents: list[int] | None = None
    count: int = 3
    attributor: str | None = None
    images: int | None = None
    images_per_latent: int = 4
    engine: str = "auto"
    progress: bool | None = None


def choose_method(ip: Any, label: str | None) -> tuple[str, Any]:
    """The attributor of the graph: ``label``, else the first of :data:`PREFERRED` the spec has, else its first.

    Raises
    ------
    InterlayerError
        For a label the spec does not have.
    """
    if label is not None:
        if label not in ip.methods:
            raise InterlayerError(f"no interlayer attributor {label!r}; the spec has {sorted(ip.methods)}")
        return label, ip.methods[label]
    for preferred in PREFERRED:
        for candidate, method in ip.methods.items():
            if getattr(method, "name", "") == preferred:
                return candidate, method
    first = next(iter(ip.methods))
    return first, ip.methods[first]


def _activation_map(backbone, sae, layer, x, latent) -> np.ndarray | None:
    """The latent over the patch tokens of one image ``[gh, gw]``, or ``None`` for a class-token SAE."""
    if getattr(sae, "tokens", "patch") == "cls":
        return None
    n_prefix = len(backbone.prefix_tokens)
    with torch.no_grad():
        h = backbone.forward_to(x, layer)[0, n_prefix:]
        z = sae.encode_latents(h, torch.full((len(h),), latent, device=h.device))
    return z.reshape(backbone.grid_size).double().cpu().numpy()


def _fired(backbone, position: int) -> tuple[int, int] | None:
    n_prefix = len(backbone.prefix_tokens)
    return None if position < n_prefix else divmod(position - n_prefix, backbone.grid_size[1])


def _thumbnails(ip, graph, peaks_by_label, out: pathlib.Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from cafe_report.rebuild import display_images

    plan = ip.plan
    backbone, context = plan.backbone, plan.context
    levels = {lv.label: lv for lv in ip.levels}
    arrays, files = {}, {}
    for node in graph["nodes"]:
        if node["kind"] != "latent":
            continue
        level = levels[node["label"]]
        best = peaks_by_label[level.label].top(node["latent"], 1)
        if not best:
            continue
        index, position, _ = best[0]
        x = backbone.preprocess([plan.dataset[index].image]).to(context.device, context.dtype)
        array = thumbnail(display_images(backbone, x)[0], _activation_map(backbone, level.sae, level.layer, x,
                                                                          node["latent"]),
                          _fired(backbone, position), tuple(backbone.patch_size))
        arrays[node["id"]] = array
        name = f"thumbs/{node['label']}-{node['latent']}.png"
        save_thumbnail(array, out / name)
        files[node["id"]] = name
    return arrays, files


def write_graphs(ip: Any, options: GraphOptions) -> pathlib.Path:
    """Build, save and draw the concept graph of each chosen latent of the target SAE.

    Returns
    -------
    pathlib.Path
        ``<out>/index.html``; beside it ``graphs.json`` (every graph), and per latent ``graph-<label>-<n>.json``,
        ``.dot`` and ``.png``, and ``thumbs/``.
    """
    from . import page

    plan = ip.plan
    backbone, context = plan.backbone, plan.context
    label, method = choose_method(ip, options.attributor)
    n_images = len(plan.dataset)
    for bound in (plan.spec.run.limit, options.images):
        if bound is not None:
            n_images = min(n_images, bound)
    show = sys.stderr.isatty() if options.progress is None else options.progress
    levels = ip.levels
    peaks = find_peaks(backbone, [lv.sae for lv in levels], plan.dataset, n_images, context,
                       count=max(1, options.images_per_latent), progress=show)
    peaks_by_label = {lv.label: p for lv, p in zip(levels, peaks)}
    top = peaks_by_label[ip.target.label]
    latents = options.latents
    if latents is None:
        latents = [int(j) for j in torch.argsort(top.values[0], descending=True, stable=True)[: options.count]
                   if top.values[0, j] > 0]
    bad = [n for n in latents if not 0 <= n < ip.target.sae.d_sae]
    if bad:
        raise InterlayerError(f"latents {bad} do not exist in {ip.target.label} ({ip.target.sae.d_sae} latents)")
    out = pathlib.Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    section = ip.section
    written = []
    for latent in latents:
        best = top.top(latent, options.images_per_latent)
        if not best:
            print(f"latent {latent} of {ip.target.label} is not active on the first {n_images} images; skipped",
                  file=sys.stderr)
            continue
        indices = [b[0] for b in best]
        x = backbone.preprocess([plan.dataset[i].image for i in indices]).to(context.device, context.dtype)
        graph = build_concept_graph(
            backbone, levels, latent, x, [b[1] for b in best], method, context, share=section.share,
            max_nodes=section.max_nodes, attributor=label, image_ids=[plan.dataset[i].image_id for i in indices],
        ).to_json()
        arrays, files = _thumbnails(ip, graph, peaks_by_label, out)
        for node in graph["nodes"]:
            node["thumbnail"] = files.get(node["id"])
        stem = f"graph-{ip.target.label}-{latent}"
        title = (f"latent {latent} of {ip.target.label} · {label} · each layer pruned to {section.share:.0%} of "
                 f"its latents' positive relevance · {len(indices)} images")
        png, engine = draw_graph(graph, arrays, out / f"{stem}.png", thumbnail_files=files, engine=options.engine,
                                 title=title)
        graph["figure"], graph["engine"] = png.name, engine
        (out / f"{stem}.json").write_text(json.dumps(_finite(graph), indent=1) + "\n")
        written.append(graph)
    (out / "graphs.json").write_text(json.dumps(_finite({"images": n_images, "graphs": written}), indent=1) + "\n")
    return page.write_graph_page(out, written, ip, n_images)


def _finite(value: Any) -> Any:
    from cafe_report.jsonable import finite

    return finite(value)

