"""Sanity checks of a run's attributors: model randomisation, a random-direction control, the relevance gain."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from cafe_core.blanks import make_blank
from cafe_core.protocols import TargetFunction
from cafe_core.records import TargetRecord
from cafe_faithfulness.curves import Insertion
from cafe_faithfulness.nonlocality import spearman
from cafe_faithfulness.relevance_gain import SymmetricRelevanceGain

from .randomise import PreActivation, RandomDirections, encoder_input, random_sae, randomised_backbone
from .rebuild import find_items
from .stats import bootstrap_record

__all__ = ["sae_for", "sanity_checks"]


def sae_for(plan: Any, record: TargetRecord) -> Any:
    """The SAE of a run plan that a target was read from, by the SAE label of its key."""
    return plan.saes[plan.sae_labels.index(record.key.sae)]


def _attribute(attributor: Any, target: TargetFunction, x: torch.Tensor, context: Any) -> torch.Tensor:
    maps = [attributor.attribute(target.select(rows), x[rows], context).heatmap.detach()
            for rows in context.chunks(len(x))]
    return torch.cat(maps).to(torch.float64).cpu()


SANITY_CURVE_POINTS = 16
"""The sanity checks' insertion curves have at most this many steps (plus the start), to keep them cheap."""


def _insertion_metric(plan: Any) -> Insertion:
    """Insertion with the run's blank and clipping (defaults where the run has none), in at most 16 steps."""
    entries = plan.resolved.get("metrics", [])
    found = next((plan.metrics[e.label] for e in entries if e.registration.name == "insertion"), Insertion())
    gh, gw = plan.backbone.grid_size
    steps = max(found.steps, math.ceil(gh * gw / SANITY_CURVE_POINTS))
    return Insertion(steps=steps, blank=found.blank, blur_sigma=found.blur_sigma, clip=found.clip)


def _scores(metric: Any, target: TargetFunction, x: torch.Tensor, heatmap: torch.Tensor, context: Any) -> np.ndarray:
    return metric.evaluate(target, x, heatmap.to(x), context).score.double().cpu().numpy()


def sanity_checks(plan: Any, sample: list[TargetRecord], heatmaps: dict, *, seed: int, directions: int = 4,
                  host: Any = None, image_index: dict[str, int] | None = None) -> dict[str, Any]:
    """Recompute the sample's explanations on randomised models and random directions.

    The randomised models explain the same latent at the same token through its pre-activation
    (:class:`cafe_report.randomise.PreActivation`), which randomisation cannot silence.

    Parameters
    ----------
    plan : cafe_core.plan.RunPlan
        The run's components.
    sample : list of TargetRecord
        Explained targets.
    heatmaps : dict
        The run's stored heatmaps by ``(target key, attributor)``.
    seed : int
        Seed of the random SAE, the redrawn backbone and the random directions.
    directions : int
        Random directions per target.
    host : PluginHost, optional
        Where the ``random`` SAE is found (every installed plugin by default).
    image_index : dict, optional
        The dataset index of each image, as the run store records it.

    Returns
    -------
    dict
        ``randomisation[attributor][sae|backbone]`` with the rank correlation between the trained and the
        randomised maps and the change of the insertion area; ``random_directions[attributor]`` with the
        latent's insertion area, the random directions' mean, their paired difference and the share of
        targets where the latent does better; ``relevance_gain[attributor]``; every value a bootstrap
        estimate (``n``, ``value``, ``low``, ``high``).
    """
    from cafe_core.plugins import get_host

    host = host or get_host()
    context = plan.context
    items = find_items(plan.dataset, sorted({r.key.image_id for r in sample}), limit=plan.spec.run.limit,
                       known=image_index)
    insertion = _insertion_metric(plan)
    gain = SymmetricRelevanceGain(steps=insertion.steps, blank=insertion.blank, blur_sigma=insertion.blur_sigma,
                                  clip=insertion.clip)
    random_backbone = randomised_backbone(plan.backbone, seed)
    collected: dict[str, dict[str, list[float]]] = {}
    groups: dict[int, list[TargetRecord]] = {}
    for record in sample:
        groups.setdefault(id(sae_for(plan, record)), []).append(record)
    for records in groups.values():
        sae = sae_for(plan, records[0])
        x = plan.backbone.preprocess([items[r.key.image_id].image for r in records]).to(context.device, context.dtype)
        target = TargetFunction.for_targets(plan.backbone, sae, [r.key.target for r in records])
        randomised = {
            "sae": TargetFunction(plan.backbone, PreActivation(random_sae(sae, seed, host)), target.layer,
                                  target.latents, target.positions),
            "backbone": TargetFunction(random_backbone, PreActivation(sae), target.layer, target.latents,
                                       target.positions),
        }
        control, x_control = _random_directions(plan.backbone, sae, target, x, directions, seed, insertion)
        for label, attributor in plan.attributors.items():
            stored = [heatmaps.get((r.key, label)) for r in records]
            if any(h is None for h in stored):
                continue
            trained = torch.as_tensor(np.stack(stored), dtype=torch.float64)
            values = collected.setdefault(label, {})
            trained_insertion = _scores(insertion, target, x, trained, context)
            for which, function in randomised.items():
                heatmap = _attribute(attributor, function, x, context)
                values.setdefault(f"{which}_correlation", []).extend(spearman(trained, heatmap).tolist())
                changed = _scores(insertion, function, x, heatmap, context) - trained_insertion
                values.setdefault(f"{which}_insertion", []).extend(changed.tolist())
            random_maps = _attribute(attributor, control, x_control, context)
            random_insertion = _scores(insertion, control, x_control, random_maps, context).reshape(len(x), directions)
            values.setdefault("latent", []).extend(trained_insertion.tolist())
            values.setdefault("random", []).extend(_row_means(random_insertion))
            values.setdefault("relevance_gain", []).extend(_scores(gain, target, x, trained, context).tolist())
    summary = _summarise(collected, len(sample), directions, seed)
    summary["curve_steps"] = math.ceil(plan.backbone.grid_size[0] * plan.backbone.grid_size[1] / insertion.steps)
    return summary


def _random_directions(backbone: Any, sae: Any, target: TargetFunction, x: torch.Tensor, count: int, seed: int,
                       insertion: Insertion):
    """``count`` random latents per row (:class:`RandomDirections`, anchored to be silent on the row's blank image
    and active on the image at the row's token), and the inputs repeated to match."""
    n = len(x)
    rows = torch.arange(n, device=x.device).repeat_interleave(count)
    positions = target.positions.repeat_interleave(count).to(x.device)
    blank = make_blank(x, insertion.blank, insertion.blur_sigma)
    with torch.no_grad():
        picked = torch.arange(n * count, device=x.device)
        on_image = target.tokens(x)[rows, positions]
        on_blank = target.tokens(blank)[rows, positions]
    readout = RandomDirections.draw(n * count, on_image.shape[-1], target.layer, seed, encoder_input(sae))
    readout = readout.to(on_image.device, on_image.dtype).anchored(on_image, on_blank)
    control = TargetFunction(backbone, readout, target.layer, picked.cpu(), positions.cpu())
    return control, x[rows]


def _row_means(values: np.ndarray) -> list[float]:
    """The mean of each row's finite values (NaN for a row with none)."""
    finite = np.isfinite(values)
    counts = finite.sum(1)
    sums = np.where(finite, values, 0.0).sum(1)
    return [float(s / c) if c else math.nan for s, c in zip(sums, counts)]


def _summarise(collected: dict[str, dict[str, list[float]]], n: int, directions: int, seed: int) -> dict[str, Any]:
    randomisation, control, relevance_gain = {}, {}, {}
    for label, values in collected.items():
        randomisation[label] = {
            which: {
                "rank_correlation": bootstrap_record(values[f"{which}_correlation"], seed, np.median),
                "insertion_change": bootstrap_record(values[f"{which}_insertion"], seed),
            }
            for which in ("sae", "backbone")
        }
        latent, random = np.array(values["latent"]), np.array(values["random"])
        paired = np.isfinite(latent) & np.isfinite(random)
        control[label] = {
            "latent": bootstrap_record(latent.tolist(), seed),
            "random": bootstrap_record(random.tolist(), seed),
            "difference": bootstrap_record((latent[paired] - random[paired]).tolist(), seed),
            "wins": float(np.mean(latent[paired] > random[paired])) if paired.any() else None,
        }
        relevance_gain[label] = bootstrap_record(values["relevance_gain"], seed)
    return {"targets": n, "directions": directions, "seed": seed, "randomisation": randomisation,
            "random_directions": control, "relevance_gain": relevance_gain,
            "statistic": "rank correlations: median; other values: mean"}

