"""How faithful each interlayer attributor is: interlayer insertion and deletion over a spec's targets.

The targets are chosen as a run chooses them (the spec's ``[[targets]]`` rules applied to the target SAE on
each of the first ``run.limit`` images); each is explained by every interlayer attributor with respect to
every source SAE, and scored by :mod:`cafe_interlayer.curves`. The result holds, per target, source and
attributor, both scores, the relevance of the error node and of the latents as shares of the target, the
conservation error, and the sparse tables: the strongest (latent, token) pairs and the strongest latents
summed over tokens.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cafe_core.selection import select_targets

from .curves import InterlayerDeletion, InterlayerInsertion
from .readout import LatentReadout

__all__ = ["FaithfulnessOptions", "choose_targets", "evaluate_faithfulness", "format_table", "summarise"]

METRICS = ("insertion", "deletion")


@dataclass
class FaithfulnessOptions:
    """Settings of :func:`evaluate_faithfulness`."""

    images: int | None = None
    table_size: int = 5
    progress: bool | None = None


def choose_targets(ip: Any, n_images: int) -> list[dict[str, Any]]:
    """The spec's targets at the target SAE on the first ``n_images`` images (explained ones only).

    Returns
    -------
    list of dict
        ``index`` (dataset index), ``image_id``, ``latent``, ``position`` and ``activation``.
    """
    plan = ip.plan
    backbone, context = plan.backbone, plan.context
    sae_index = next(i for i, sae in enumerate(plan.saes) if sae is ip.target.sae)
    chosen = []
    for start in range(0, n_images, context.batch_size):
        indices = list(range(start, min(start + context.batch_size, n_images)))
        items = [plan.dataset[i] for i in indices]
        x = backbone.preprocess([item.image for item in items]).to(context.device, context.dtype)
        with torch.no_grad():
            codes = ip.target.sae.encode(backbone.forward_to(x, ip.target.layer)).float().cpu()
        for rule, position in zip(plan.spec.targets, plan.rule_positions[sae_index]):
            records = select_targets(
                codes if rule.latents is None else codes[..., rule.latents],
                image_ids=[item.image_id for item in items], sae=ip.target.label, layer=ip.target.layer,
                backbone=backbone, latents=rule.latents, select=rule.select, count=rule.count, position=position,
                min_activation=rule.min_activation, seed=plan.context.seed,
            )
            by_id = {item.image_id: i for i, item in zip(indices, items)}
            chosen += [{"index": by_id[r.key.image_id], "image_id": r.key.image_id, "latent": r.key.latent,
                        "position": r.key.position, "activation": r.activation}
                       for r in records if r.status == "explained"]
    seen, unique = set(), []
    for t in chosen:  # two rules may pick the same target
        key = (t["index"], t["latent"], t["position"])
        if key not in seen:
            seen.add(key)
            unique.append(t)
    return unique


def evaluate_faithfulness(ip: Any, options: FaithfulnessOptions) -> dict[str, Any]:
    """Explain every target by every attributor through every source, and score the rankings.

    Returns
    -------
    dict
        ``rows`` (one per target, source and attributor), ``summary`` (see :func:`summarise`), ``curves``
        (mean curves per source, attributor and metric), and the settings.
    """
    plan = ip.plan
    backbone, context = plan.backbone, plan.context
    n_images = len(plan.dataset)
    for bound in (plan.spec.run.limit, options.images):
        if bound is not None:
            n_images = min(n_images, bound)
    targets = choose_targets(ip, n_images)
    if not targets:
        from .errors import InterlayerError

        raise InterlayerError("no target is active on the images; check the spec's [[targets]] rules")
    x = backbone.preprocess([plan.dataset[t["index"]].image for t in targets]).to(context.device, context.dtype)
    n_tokens = backbone.forward_to(x[:1], ip.target.layer).shape[1]
    readout = LatentReadout.at_positions(ip.target.sae, ip.target.layer, [t["latent"] for t in targets],
                                         [t["position"] for t in targets], n_tokens)
    section = ip.section
    metrics = {"insertion": InterlayerInsertion(section.points, section.error, section.unit, section.clip),
               "deletion": InterlayerDeletion(section.points, section.error, section.unit, section.clip)}
    show = sys.stderr.isatty() if options.progress is None else options.progress
    rows, curves = [], {}
    jobs = [(level, label, method) for level in ip.sources for label, method in ip.methods.items()]
    for level, label, method in tqdm(jobs, desc="interlayer", disable=not show):
        source = ip.source(level)
        attribution = method.attribute(source, readout, x, context)
        scored = {name: metric.evaluate(source, readout, x, attribution, context) for name, metric in metrics.items()}
        for name, result in scored.items():
            curves[(level.label, label, name)] = (result.fractions.tolist(), _nanmean(result.curve))
        for i, target in enumerate(targets):
            value = float(attribution.value[i])
            rows.append({
                **{k: target[k] for k in ("image_id", "latent", "position", "activation")},
                "target": ip.target.label, "source": level.label, "source_layer": level.layer, "attributor": label,
                **{name: float(result.score[i]) for name, result in scored.items()},
                "units": int(scored["insertion"].info["units"][i]),
                "latent_share": float(attribution.latents[i].sum()) / value,
                "error_share": float(attribution.error[i].sum()) / value,
                "conservation_error": float(attribution.info["conservation_error"][i]),
                "top_pairs": attribution.top_pairs(i, options.table_size),
                "top_latents": attribution.top_latents(i, options.table_size),
            })
    return {
        "target": {"label": ip.target.label, "layer": ip.target.layer},
        "sources": [{"label": lv.label, "layer": lv.layer} for lv in ip.sources],
        "attributors": {label: repr(method) for label, method in ip.methods.items()},
        "settings": {"error": section.error, "unit": section.unit, "points": section.points, "clip": section.clip,
                     "images": n_images, "targets": len(targets),
                     "rules": [rule.model_dump() for rule in plan.spec.targets]},
        "summary": summarise(rows),
        "curves": [{"source": s, "attributor": a, "metric": m, "fractions": f, "mean": c}
                   for (s, a, m), (f, c) in curves.items()],
        "rows": rows,
    }


def _nanmean(curve: torch.Tensor) -> list[float]:
    values = curve.double().cpu().numpy()
    kept = values[np.isfinite(values).all(1)]
    return kept.mean(0).tolist() if len(kept) else [math.nan] * values.shape[1]


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per source, metric and attributor: ``n`` (finite scores), ``mean``, ``sem`` and ``median``."""
    out = []
    keys = sorted({(r["source_layer"], r["source"], r["attributor"]) for r in rows}, key=lambda k: (-k[0], k[1], k[2]))
    for metric in METRICS:
        for layer, source, attributor in keys:
            values = np.array([r[metric] for r in rows if (r["source"], r["attributor"]) == (source, attributor)])
            values = values[np.isfinite(values)]
            n = len(values)
            out.append({"source": source, "source_layer": layer, "metric": metric, "attributor": attributor, "n": n,
                        "mean": float(values.mean()) if n else math.nan,
                        "sem": float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
                        "median": float(np.median(values)) if n else math.nan})
    return out


def format_table(result: dict[str, Any]) -> str:
    """The summary as aligned text (arrows: which direction is better)."""
    arrows = {"insertion": "↑", "deletion": "↓"}
    lines = [f"{'source':<10} {'metric':<12} {'attributor':<22} {'n':>4} {'mean':>8} {'± sem':>8} {'median':>8}"]
    for row in result["summary"]:
        lines.append(f"{row['source']:<10} {row['metric'] + ' ' + arrows[row['metric']]:<12} {row['attributor']:<22} "
                     f"{row['n']:>4} {row['mean']:>8.4f} {row['sem']:>8.4f} {row['median']:>8.4f}")
    settings = result["settings"]
    lines.append(f"target {result['target']['label']} (layer {result['target']['layer']}); {settings['targets']} "
                 f"targets on {settings['images']} images; blank: reconstruction of no latents "
                 f"{'plus' if settings['error'] == 'keep' else 'without'} the error; unit: {settings['unit']}; "
                 f"{settings['points']} points per curve")
    return "\n".join(lines)
