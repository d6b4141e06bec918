"""The paper's manual count of non-local latents per layer, computed.

For every patch-token SAE of a spec, one pass over the dataset finds each latent's most active patch token
(over all images; the earlier image and token win ties). The latents active somewhere are sampled at random
(``numpy.random.default_rng(seed + layer)``, without replacement, at most ``latents`` per layer), each is
explained at that token by the chosen attributor, and it is called **non-local** when the fired token's own
patch holds less than ``threshold`` (default half) of the positive relevance (``own_patch_share``). The
share of non-local latents per layer comes with its Wilson 95% interval.

The selection rule is part of the measurement: a latent read at its own top token is local far more often
than one read at a token chosen otherwise, so the rule is stored with the results. Class-token SAEs are
listed apart: their latents have no patch of their own, so the rule does not apply to them.
"""

from __future__ import annotations

import csv
import json
import math
import pathlib
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cafe_core.protocols import TargetFunction
from cafe_faithfulness.nonlocality import activation_maps, centre_of_mass, mass_outside, spearman

from .features import choose_attributor
from .jsonable import finite
from .locality import fired_cells
from .errors import ReportError
from .stats import wilson_interval

__all__ = ["NonlocalOptions", "analyse_nonlocal", "format_table", "top_tokens", "write_outputs"]

RULE = ("each sampled latent is read at its most active patch token over the dataset (earlier image and token "
        "win ties); latents active on at least one patch token are sampled with numpy.random.default_rng(seed + "
        "layer).choice(..., replace=False) and sorted")


@dataclass
class NonlocalOptions:
    """Settings of :func:`analyse_nonlocal` (see ``cafe analyze nonlocal --help``)."""

    latents: int = 100
    images: int | None = None
    attributor: str | None = None
    threshold: float = 0.5
    radius: int = 1
    seed: int | None = None
    progress: bool | None = None


def top_tokens(plan: Any, sae: Any, n_images: int, progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per latent: its largest value over every patch token of the first ``n_images`` images, the image and position.

    Returns
    -------
    tuple of numpy.ndarray
        ``values [d_sae]`` (0 for a latent never active), ``images [d_sae]`` (dataset indices) and
        ``positions [d_sae]`` (token positions, prefix tokens counted).
    """
    backbone, context = plan.backbone, plan.context
    n_prefix = len(backbone.prefix_tokens)
    values = np.zeros(sae.d_sae)
    images = np.zeros(sae.d_sae, dtype=np.int64)
    positions = np.zeros(sae.d_sae, dtype=np.int64)
    with tqdm(total=n_images, desc=f"layer {sae.layer}", unit="image", disable=not progress) as bar:
        for start in range(0, n_images, context.batch_size):
            stop = min(start + context.batch_size, n_images)
            x = backbone.preprocess([plan.dataset[i].image for i in range(start, stop)])
            x = x.to(context.device, context.dtype)
            with torch.no_grad():
                codes = sae.encode(backbone.forward_to(x, sae.layer)[:, n_prefix:])
            b, p, d = codes.shape
            flat = codes.reshape(b * p, d).double().cpu().numpy()
            best = flat.argmax(0)
            value = flat[best, np.arange(d)]
            better = value > values
            values[better] = value[better]
            images[better] = start + best[better] // p
            positions[better] = n_prefix + best[better] % p
            bar.update(stop - start)
    return values, images, positions


def analyse_nonlocal(plan: Any, options: NonlocalOptions) -> dict[str, Any]:
    """Sample latents per layer, explain them at their top token, and count the non-local ones.

    Returns
    -------
    dict
        ``layers``: per patch-token SAE its ``layer``, ``alive`` and ``sampled`` latents, ``nonlocal`` count,
        ``share`` with ``low`` and ``high`` (Wilson 95%), and medians of the locality measures; ``latents``:
        one row per explained latent; ``class_token_saes``: the SAEs left out; the ``rule``, ``threshold``,
        ``seed``, ``attributor`` and ``images``.
    """
    label, attributor = choose_attributor(plan, options.attributor)
    seed = plan.context.seed if options.seed is None else options.seed
    n_images = len(plan.dataset)
    for bound in (plan.spec.run.limit, options.images):
        if bound is not None:
            n_images = min(n_images, bound)
    show = sys.stderr.isatty() if options.progress is None else options.progress
    layers, rows, skipped = [], [], []
    for sae in sorted(plan.saes, key=lambda s: s.layer):
        if getattr(sae, "tokens", "patch") == "cls":
            skipped.append({"layer": sae.layer, "reason": "class-token SAE: its latents have no patch of their own"})
            continue
        values, images, positions = top_tokens(plan, sae, n_images, show)
        alive = np.flatnonzero(values > 0)
        rng = np.random.default_rng(seed + sae.layer)
        chosen = np.sort(rng.choice(alive, size=min(options.latents, len(alive)), replace=False))
        measured = _explain(plan, sae, attributor, chosen, images[chosen], positions[chosen], options.radius)
        nonlocal_ = measured["own_patch_share"] < options.threshold
        k, n = int(nonlocal_.sum()), int(len(chosen))
        low, high = wilson_interval(k, n)
        layers.append({
            "layer": sae.layer, "alive": int(len(alive)), "d_sae": int(sae.d_sae), "sampled": n, "nonlocal": k,
            "share": k / n if n else math.nan, "low": low, "high": high,
            **{f"median_{name}": _median(v) for name, v in measured.items()},
        })
        for i, latent in enumerate(chosen):
            rows.append({"layer": sae.layer, "latent": int(latent),
                         "image_id": plan.dataset[int(images[latent])].image_id, "position": int(positions[latent]),
                         "activation": float(values[latent]), **{k_: float(v[i]) for k_, v in measured.items()},
                         "nonlocal": bool(nonlocal_[i])})
    if not layers:
        raise ReportError("the spec has no patch-token SAE; add one (e.g. toy_sae with tokens = \"patch\")")
    return {"layers": layers, "latents": rows, "class_token_saes": skipped, "rule": RULE,
            "threshold": options.threshold, "radius": options.radius, "seed": seed, "attributor": label,
            "images": n_images, "criterion": f"own_patch_share < {options.threshold}"}


def _explain(plan, sae, attributor, latents, images, positions, radius: int) -> dict[str, np.ndarray]:
    """Explain each latent at its top token; the locality measures of every heatmap."""
    backbone, context = plan.backbone, plan.context
    out: dict[str, list[float]] = {"own_patch_share": [], "nonlocal_mass": [], "relevance_distance": [],
                                   "activation_agreement": []}
    for chunk in context.chunks(len(latents)):
        idx = images[chunk]
        x = backbone.preprocess([plan.dataset[int(i)].image for i in idx]).to(context.device, context.dtype)
        target = TargetFunction(backbone, sae, sae.layer, latents[chunk], positions[chunk])
        heatmap = attributor.attribute(target, x, context).heatmap.detach().double().cpu()
        rows, cols, _ = fired_cells(backbone, sae.layer, positions[chunk].tolist())
        r, c = torch.as_tensor(rows), torch.as_tensor(cols)
        positive = heatmap.clamp_min(0).flatten(1)
        total = positive.sum(1)
        own = positive.gather(1, (r * backbone.grid_size[1] + c)[:, None]).squeeze(1)
        out["own_patch_share"] += torch.where(total > 0, own / total.clamp_min(1e-300), torch.nan).tolist()
        out["nonlocal_mass"] += mass_outside(heatmap, r, c, radius).tolist()
        com_row, com_col = centre_of_mass(heatmap)
        out["relevance_distance"] += torch.hypot(com_row - r, com_col - c).tolist()
        out["activation_agreement"] += spearman(activation_maps(target, x, context), heatmap).tolist()
    return {name: np.array(values) for name, values in out.items()}


def _median(values: np.ndarray) -> float:
    kept = values[np.isfinite(values)]
    return float(np.median(kept)) if len(kept) else math.nan


def format_table(result: dict[str, Any]) -> str:
    """The per-layer table as aligned text."""
    lines = [f"{'layer':>5} {'alive':>6} {'sampled':>8} {'non-local':>10} {'share':>7} {'95% interval':>16} "
             f"{'median own-patch share':>23}"]
    for row in result["layers"]:
        interval = f"[{row['low']:.1%}, {row['high']:.1%}]"
        lines.append(f"{row['layer']:>5} {row['alive']:>6} {row['sampled']:>8} {row['nonlocal']:>10} "
                     f"{row['share']:>7.1%} {interval:>16} {row['median_own_patch_share']:>23.3f}")
    for skipped in result["class_token_saes"]:
        lines.append(f"layer {skipped['layer']}: not counted ({skipped['reason']})")
    lines.append(f"non-local: {result['criterion']} ({result['attributor']} iERF); {result['images']} images; "
                 f"seed {result['seed']}")
    lines.append(f"rule: {result['rule']}")
    return "\n".join(lines)


def write_outputs(result: dict[str, Any], out: pathlib.Path) -> list[pathlib.Path]:
    """``nonlocal.json``, ``nonlocal.csv`` (one row per latent), ``nonlocal.png`` and ``index.html`` in ``out``."""
    from . import markup
    from .nonlocal_figure import nonlocal_figure

    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "nonlocal.json"
    json_path.write_text(json.dumps(finite(result), indent=1, allow_nan=False) + "\n")
    csv_path = out / "nonlocal.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        fields = list(result["latents"][0]) if result["latents"] else ["layer"]
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(result["latents"])
    png = nonlocal_figure(out / "nonlocal.png", result)
    body = ("<h1>Non-local latents per layer</h1>" + markup.figure("nonlocal.png", "non-local share per layer")
            + f"<pre>{markup.escape(format_table(result))}</pre>"
            + '<p class="muted">Per-latent rows: nonlocal.csv; everything: nonlocal.json.</p>')
    page = markup.write_page(out / "index.html", markup.page("cafe non-locality", body))
    return [json_path, csv_path, png, page]
