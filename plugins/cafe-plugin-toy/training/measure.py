"""Measure what the default model shows: non-local latents by layer, and explanations against ground truth.

Non-locality. For each patch-token SAE (layers 0, 2, 3) every latent is read at one token chosen by a
selection rule, explained with AttnLRP, and called *non-local* when the fired token's own patch holds less
than half of the positive relevance (``own_patch_share < 0.5``). Two selection rules are reported, because the
rule is part of the measurement:

* ``global``: each latent's most active token over all patch tokens (the headline rule of the README);
* ``background``: each latent's most active *background* token over the images (a patch no object pixel
  touches).

Latents are those active on at least one such token, sampled (seeded) down to ``--latents`` per layer.

Ground truth. Class-token latents of the last layer that predict a label bit (AUROC of the latent for "a red
shape is present" or "a triangle is present" of at least ``--auroc``) are explained on the images where they
fire most, by every attributor, and scored with ``object_hit``: the share of the top patches that touch the
objects that decided the label.

Usage (from the repository root, after the README's setup)::

    .venv/bin/python plugins/cafe-plugin-toy/training/measure.py --out plugins/cafe-plugin-toy/training/measurements.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np
import torch

from cafe_core.plugins import PluginHost
from cafe_core.protocols import RunContext, TargetFunction
from cafe_shapes import ShapesDataset, patch_object_fraction

MEASURE_SEED = 4
ATTRIBUTORS = ("activation_map", "gradient_x_input", "integrated_gradients", "attnlrp", "cp_lrp", "occlusion", "random")


def explain(attributor, target: TargetFunction, x: torch.Tensor, context: RunContext) -> torch.Tensor:
    """Heatmaps of all rows, in chunks of the context's batch size."""
    return torch.cat([attributor.attribute(target.select(rows), x[rows], context).heatmap for rows in context.chunks(len(x))])


def score(metric, target: TargetFunction, x: torch.Tensor, heatmap: torch.Tensor, context, **extra) -> np.ndarray:
    """Metric scores of all rows."""
    return metric.evaluate(target, x, heatmap, context, **extra).score.double().numpy()


def top_tokens(backbone, sae, layer, images, masks, batch_size):
    """Per latent: the most active background token and the most active token, as (value, image, patch)."""
    d_sae = sae.d_sae
    best = {rule: (np.full(d_sae, 0.0), np.zeros(d_sae, int), np.zeros(d_sae, int)) for rule in ("background", "global")}
    n_prefix = len(backbone.prefix_tokens)
    for start in range(0, len(images), batch_size):
        x = backbone.preprocess(list(images[start : start + batch_size]))
        with torch.no_grad():
            codes = sae.encode(backbone.forward_to(x, layer)[:, n_prefix:]).numpy()  # [B, P, d_sae]
        background = np.stack(
            [patch_object_fraction(m, backbone.patch_size) .reshape(-1) == 0 for m in masks[start : start + batch_size]]
        )
        for rule, allowed in (("background", background), ("global", np.ones_like(background))):
            masked = np.where(allowed[:, :, None], codes, -np.inf).reshape(-1, d_sae)
            flat = masked.argmax(0)
            value = masked[flat, np.arange(d_sae)]
            values, image, patch = best[rule]
            better = value > values
            values[better] = value[better]
            image[better] = start + flat[better] // codes.shape[1]
            patch[better] = flat[better] % codes.shape[1]
    return best


def nonlocality(host, backbone, layer, sae, images, masks, labels_info, args, context):
    """Non-local share per selection rule, with where AttnLRP's top patch falls."""
    attnlrp = host.registry("attributor").get("attnlrp").build({})
    own_patch = host.registry("metric").get("own_patch_share").build({})
    object_hit = host.registry("metric").get("object_hit").build({"objects": "any"})
    deciding_hit = host.registry("metric").get("object_hit").build({"objects": "deciding"})
    best = top_tokens(backbone, sae, layer, images, masks, args.batch_size)
    rng = np.random.default_rng(args.seed + layer)
    report = {"alive_latents": int((best["global"][0] > 0).sum()), "d_sae": sae.d_sae}
    for rule, (values, image, patch) in best.items():
        candidates = np.flatnonzero(values > 0)
        chosen = np.sort(rng.choice(candidates, size=min(args.latents, len(candidates)), replace=False))
        positions = patch[chosen] + len(backbone.prefix_tokens)
        target = TargetFunction(backbone, sae, layer, chosen, positions)
        x = backbone.preprocess(list(images[image[chosen]]))
        heatmap = explain(attnlrp, target, x, context)
        annotations = [labels_info[i] for i in image[chosen]]
        share = score(own_patch, target, x, heatmap, context)
        nonlocal_rows = share < 0.5
        on_object = score(object_hit, target, x, heatmap, context, annotations=annotations)
        on_deciding = score(deciding_hit, target, x, heatmap, context, annotations=annotations)
        report[rule] = {
            "latents": int(len(chosen)),
            "nonlocal_share": float(np.mean(nonlocal_rows)),
            "median_own_patch_share": float(np.median(share)),
            "nonlocal_top_patch_on_object": float(np.nanmean(on_object[nonlocal_rows])) if nonlocal_rows.any() else None,
            "nonlocal_top_patch_on_deciding_object": (
                float(np.nanmean(on_deciding[nonlocal_rows])) if np.isfinite(on_deciding[nonlocal_rows]).any() else None
            ),
        }
    return report


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for a boolean ``positive`` (rank formula, ties averaged)."""
    order = scores.argsort(kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks of ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def ground_truth(host, backbone, images, labels, infos, args, context):
    """object_hit of every attributor for the class-token latents that predict a label bit."""
    sae = host.registry("sae").get("toy_sae").build({"layer": 3, "tokens": "cls"})
    codes = []
    for start in range(0, len(images), args.batch_size):
        x = backbone.preprocess(list(images[start : start + args.batch_size]))
        with torch.no_grad():
            codes.append(sae.encode(backbone.forward_to(x, 3)[:, 0]).numpy())
    codes = np.concatenate(codes)
    red, triangle = labels >= 2, labels % 2 == 1
    alive = np.flatnonzero(codes.max(0) > 0)
    predictive = [
        n for n in alive if max(auroc(codes[:, n], red), auroc(codes[:, n], triangle)) >= args.auroc
    ]
    report = {"cls_alive_latents": int(len(alive)), "cls_d_sae": sae.d_sae, "predictive_latents": len(predictive)}
    rows_latent, rows_image = [], []
    for n in predictive:  # the images where the latent fires most and a deciding object exists
        ranked = [i for i in np.argsort(-codes[:, n]) if infos[i]["deciding"] and codes[i, n] > 0]
        rows_latent += [n] * len(ranked[: args.images_per_latent])
        rows_image += ranked[: args.images_per_latent]
    target = TargetFunction(backbone, sae, 3, rows_latent, [0] * len(rows_latent))
    x = backbone.preprocess(list(images[rows_image]))
    annotations = [infos[i] for i in rows_image]
    hit = host.registry("metric").get("object_hit").build({"objects": "deciding"})
    hit3 = host.registry("metric").get("object_hit").build({"objects": "deciding", "top_k": 3})
    report["targets"] = len(rows_latent)
    report["object_hit"] = {}
    for name in ATTRIBUTORS:
        attributor = host.registry("attributor").get(name).build({})
        heatmap = explain(attributor, target, x, context)
        report["object_hit"][name] = {
            "top1": float(np.nanmean(score(hit, target, x, heatmap, context, annotations=annotations))),
            "top3": float(np.nanmean(score(hit3, target, x, heatmap, context, annotations=annotations))),
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--latents", type=int, default=200)
    parser.add_argument("--images-per-latent", type=int, default=3)
    parser.add_argument("--auroc", type=float, default=0.75)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.time()
    host = PluginHost()
    backbone = host.registry("backbone").get("toy_vit").build({})
    context = RunContext(batch_size=args.batch_size, seed=args.seed)
    dataset = ShapesDataset(args.images, seed=MEASURE_SEED)
    images, labels, masks = dataset.tensors()
    infos = [dataset[i].info for i in range(len(dataset))]
    report = {"images": args.images, "dataset_seed": MEASURE_SEED, "args": {k: str(v) for k, v in vars(args).items()}}
    report["nonlocality"] = {}
    for layer in (0, 2, 3):
        sae = host.registry("sae").get("toy_sae").build({"layer": layer, "tokens": "patch"})
        report["nonlocality"][f"layer{layer}"] = nonlocality(
            host, backbone, layer, sae, images, masks.numpy(), infos, args, context
        )
        print(json.dumps({f"layer{layer}": report["nonlocality"][f"layer{layer}"]}), flush=True)
    report["ground_truth"] = ground_truth(host, backbone, images, labels.numpy(), infos, args, context)
    print(json.dumps(report["ground_truth"]), flush=True)
    report["seconds"] = round(time.time() - started, 1)
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
