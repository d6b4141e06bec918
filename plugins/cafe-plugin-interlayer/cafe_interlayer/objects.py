"""Does the concept graph reach the latents that fire on the objects that decided the label?

For datasets whose items record an object ``mask`` and the ``deciding`` objects (cafe-plugin-shapes), and a
class-token SAE as the target:

1. Class-token latents that **predict the label**: over the first ``images`` images, the AUROC of the latent
   for each bit of the label (``(label >> b) & 1``; for the shapes rule ``red_and_triangle``, "a red shape is
   present" and "a triangle is present") is at least ``auroc`` for some bit.
2. Each is explained on the ``per_latent`` images where it fires most and a deciding object exists, one graph
   per image, by every attributor.
3. On that image, a latent of a source layer **fires on the deciding objects** when at least ``selective``
   (half) of its activation over the patch tokens lies on patches that touch a deciding object.
4. Per source layer: whether a kept node fires on the deciding objects (*reached*), the share of the kept
   nodes' positive relevance that such nodes hold, and two chance levels: the share of the latents active on
   the image that fire on the deciding objects, and the probability that as many latents drawn at random among
   the active ones would include one.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import InterlayerError
from .graph import build_concept_graph

__all__ = ["ObjectsOptions", "auroc", "check_objects", "format_objects_table"]


@dataclass
class ObjectsOptions:
    """Settings of :func:`check_objects` (see ``cafe interlayer objects --help``)."""

    images: int = 1000
    auroc: float = 0.75
    per_latent: int = 3
    selective: float = 0.5
    attributors: list[str] | None = None
    progress: bool | None = None


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for boolean ``positive`` (rank formula, ties averaged); NaN when
    one class is empty."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return math.nan
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):
        tied = scores == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _deciding_patches(info: dict[str, Any], backbone: Any) -> np.ndarray:
    """Boolean ``[gh * gw]``: patches that touch a deciding object (the mask resized to the model's input)."""
    from cafe_shapes import patch_object_fraction

    mask = np.asarray(info["mask"])
    height, width = backbone.image_size
    mask = mask[(np.arange(height) * mask.shape[0]) // height][:, (np.arange(width) * mask.shape[1]) // width]
    return patch_object_fraction(mask, backbone.patch_size, list(info["deciding"])).reshape(-1) > 0


def _chance_reach(active: int, selective: int, kept: int) -> float:
    """P(at least one of ``kept`` latents drawn without replacement among ``active`` is one of ``selective``)."""
    if active == 0 or kept == 0:
        return 0.0
    kept = min(kept, active)
    return 1.0 - math.comb(active - selective, kept) / math.comb(active, kept)


def _codes(ip, n_images):
    plan = ip.plan
    backbone, context, sae = plan.backbone, plan.context, ip.target.sae
    position = backbone.prefix_tokens.index("cls")
    codes, infos = [], []
    for start in range(0, n_images, context.batch_size):
        items = [plan.dataset[i] for i in range(start, min(start + context.batch_size, n_images))]
        x = backbone.preprocess([item.image for item in items]).to(context.device, context.dtype)
        with torch.no_grad():
            codes.append(sae.encode(backbone.forward_to(x, ip.target.layer)[:, position]).double().cpu().numpy())
        infos += [item.info for item in items]
    return np.concatenate(codes), infos, position


def check_objects(ip: Any, options: ObjectsOptions) -> dict[str, Any]:
    """Run the check of the module's description.

    Returns
    -------
    dict
        ``summary`` (per attributor and source layer), ``targets`` (per target, attributor and layer), the
        predictive latents and the settings.

    Raises
    ------
    InterlayerError
        When the target SAE is not a class-token SAE or the dataset has no object masks.
    """
    plan = ip.plan
    backbone, context = plan.backbone, plan.context
    if getattr(ip.target.sae, "tokens", "patch") != "cls":
        raise InterlayerError(f"the target {ip.target.label} is not a class-token SAE; name one with --target "
                              "(the default model's: toy_sae with layer = 3 and tokens = \"cls\")")
    n_images = min(options.images, len(plan.dataset), plan.spec.run.limit or len(plan.dataset))
    codes, infos, position = _codes(ip, n_images)
    if not all("mask" in info and "deciding" in info and "label" in info for info in infos[:1]):
        raise InterlayerError("the dataset's items have no `mask`, `deciding` and `label` annotations; use the "
                              "`shapes` dataset (cafe-plugin-shapes)")
    labels = np.array([int(info["label"]) for info in infos])
    bits = max(1, int(math.ceil(math.log2(max(2, labels.max() + 1)))))
    alive = np.flatnonzero(codes.max(0) > 0)
    predictive = []
    for j in alive:
        scores = [auroc(codes[:, j], (labels >> b) & 1 == 1) for b in range(bits)]
        best = max((s for s in scores if not math.isnan(s)), default=math.nan)
        if best >= options.auroc:
            predictive.append({"latent": int(j), "auroc": [None if math.isnan(s) else s for s in scores]})
    targets = []
    for entry in predictive:
        j = entry["latent"]
        ranked = [i for i in np.argsort(-codes[:, j], kind="stable") if codes[i, j] > 0 and infos[i]["deciding"]]
        targets += [(j, int(i)) for i in ranked[: options.per_latent]]
    labels_ = options.attributors or [k for k, m in ip.methods.items() if getattr(m, "name", "") != "random"]
    missing = [k for k in labels_ if k not in ip.methods]
    if missing:
        raise InterlayerError(f"no interlayer attributors {missing}; the spec has {sorted(ip.methods)}")
    show = sys.stderr.isatty() if options.progress is None else options.progress
    rows = []
    for latent, index in tqdm(targets, desc="objects", disable=not show):
        x = backbone.preprocess([plan.dataset[index].image]).to(context.device, context.dtype)
        deciding = _deciding_patches(infos[index], backbone)
        selective = {lv.label: _selective(backbone, lv, x, deciding, options.selective) for lv in ip.sources}
        for label in labels_:
            graph = build_concept_graph(backbone, ip.levels, latent, x, [position], ip.methods[label], context,
                                        share=ip.section.share, max_nodes=ip.section.max_nodes).to_json()
            for level in ip.sources:
                rows.append(_score(graph, level, label, latent, plan.dataset[index].image_id, *selective[level.label]))
    return {"target": {"label": ip.target.label, "layer": ip.target.layer}, "images": n_images,
            "predictive": predictive, "targets": rows, "summary": _summarise(rows),
            "settings": {"auroc": options.auroc, "per_latent": options.per_latent, "selective": options.selective,
                         "share": ip.section.share, "max_nodes": ip.section.max_nodes}}


def _selective(backbone, level, x, deciding: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per latent of the level on this image: active over the patch tokens, and firing on the deciding objects."""
    n_prefix = len(backbone.prefix_tokens)
    with torch.no_grad():
        codes = level.sae.encode(backbone.forward_to(x, level.layer)[0, n_prefix:]).double().cpu().numpy()
    mass = codes.clip(min=0)
    total = mass.sum(0)
    on_objects = mass[deciding].sum(0)
    active = total > 0
    return active, active & (on_objects >= threshold * np.where(active, total, 1))


def _score(graph, level, attributor, latent, image_id, active, selective) -> dict[str, Any]:
    kept = [n for n in graph["nodes"] if n["label"] == level.label and n["kind"] == "latent"]
    positive = sum(max(n["relevance"], 0.0) for n in kept)
    on_objects = [n for n in kept if selective[n["latent"]]]
    n_active, n_selective = int(active.sum()), int(selective.sum())
    return {"latent": latent, "image_id": image_id, "attributor": attributor, "source": level.label,
            "source_layer": level.layer, "kept": len(kept), "kept_on_objects": len(on_objects),
            "reached": bool(on_objects),
            "relevance_share": sum(max(n["relevance"], 0.0) for n in on_objects) / positive if positive > 0 else math.nan,
            "chance_share": n_selective / n_active if n_active else math.nan,
            "chance_reach": _chance_reach(n_active, n_selective, len(kept))}


def _summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    keys = sorted({(r["source_layer"], r["source"], r["attributor"]) for r in rows}, key=lambda k: (-k[0], k[1], k[2]))
    for layer, source, attributor in keys:
        chosen = [r for r in rows if (r["source"], r["attributor"]) == (source, attributor)]
        mean = lambda key: float(np.nanmean([r[key] for r in chosen])) if chosen else math.nan  # noqa: E731
        out.append({"source": source, "source_layer": layer, "attributor": attributor, "targets": len(chosen),
                    "reached": mean("reached"), "relevance_share": mean("relevance_share"),
                    "chance_share": mean("chance_share"), "chance_reach": mean("chance_reach"),
                    "kept": mean("kept")})
    return out


def format_objects_table(result: dict[str, Any]) -> str:
    """The summary as aligned text."""
    lines = [f"{'source':<10} {'attributor':<22} {'targets':>7} {'kept':>5} {'reached':>8} {'chance':>7} "
             f"{'R share':>8} {'chance':>7}"]
    for row in result["summary"]:
        lines.append(f"{row['source']:<10} {row['attributor']:<22} {row['targets']:>7} {row['kept']:>5.1f} "
                     f"{row['reached']:>8.1%} {row['chance_reach']:>7.1%} {row['relevance_share']:>8.1%} "
                     f"{row['chance_share']:>7.1%}")
    settings = result["settings"]
    lines.append(f"{len(result['predictive'])} class-token latents of {result['target']['label']} predict a label bit "
                 f"(AUROC >= {settings['auroc']}) on {result['images']} images; {settings['per_latent']} images each; "
                 f"a latent fires on the deciding objects when >= {settings['selective']:.0%} of its activation lies "
                 "on their patches")
    lines.append("reached: a kept node fires on the deciding objects (chance: as many active latents drawn at random); "
                 "R share: their share of the kept nodes' positive relevance (chance: share of active latents that do)")
    return "\n".join(lines)
