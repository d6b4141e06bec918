"""What ``[run] autocast`` changes: heatmap rank correlation with float32, AUC differences, and wall time.

Runs one spec (the quickstart by default, or the same study over vit_base with ``--vit-base``) three times on
one device: in float32, under bfloat16 and under float16 autocast. Every run explains the same targets
(selection stays in float32), so each heatmap and score of an autocast run has its float32 counterpart.

``python benchmarks/autocast_effect.py [--device cuda] [--vit-base] [--json OUT]``
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

import numpy as np

import cafe_core
from studies import quickstart_study

PRECISIONS = (None, "bfloat16", "float16")


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks of ``values`` (flattened) from 0, ties sharing their mean rank."""
    flat = values.ravel()
    order = np.argsort(flat, kind="stable")
    sorted_values = flat[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], len(flat)]
    mean_rank = np.repeat((starts + ends - 1) / 2, ends - starts)
    out = np.empty(len(flat))
    out[order] = mean_rank
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two heatmaps (NaN when one of them is constant)."""
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def compare(reference: cafe_core.Results, lowered: cafe_core.Results) -> dict:
    """Per attributor: rank correlations of its heatmaps; per (attributor, metric): AUC differences."""
    out: dict = {"spearman": {}, "auc": {}}
    for entry in reference.heatmap_index:
        key = reference.key(entry["image_id"], entry["layer"], entry["latent"], entry["position"], entry["sae"])
        a = reference.heatmap(*_where(key), entry["attributor"], sae=key.sae)
        b = lowered.heatmap(*_where(key), entry["attributor"], sae=key.sae)
        out["spearman"].setdefault(entry["attributor"], []).append(spearman(a, b))
    scores = {(tuple(r[k] for k in ("image_id", "sae", "latent", "position")), r["attributor"], r["metric"]): r["score"]
              for r in lowered.rows}
    for row in reference.rows:
        key = (tuple(row[k] for k in ("image_id", "sae", "latent", "position")), row["attributor"], row["metric"])
        pair = out["auc"].setdefault(f"{row['attributor']} / {row['metric']}", [])
        pair.append((row["score"], scores[key]))
    return out


def _where(key) -> tuple:
    return key.image_id, key.layer, key.latent, key.position


def summarise(name: str, comparison: dict, seconds: float, reference_seconds: float) -> list[str]:
    lines = [f"### {name}: wall time {seconds:.1f} s ({seconds / reference_seconds:.2f}x of float32)", "",
             "| attributor | heatmaps | median Spearman | 5th percentile | min |", "| --- | ---: | ---: | ---: | ---: |"]
    for attributor, values in sorted(comparison["spearman"].items()):
        v = np.asarray(values, dtype=float)
        v = v[np.isfinite(v)]
        if len(v) == 0:
            lines.append(f"| {attributor} | {len(values)} | constant | | |")
            continue
        lines.append(f"| {attributor} | {len(values)} | {np.median(v):.4f} | {np.percentile(v, 5):.4f} | {v.min():.4f} |")
    lines += ["", "| attributor / metric | mean AUC float32 | mean AUC here | mean abs. difference | max abs. difference |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for pair, values in sorted(comparison["auc"].items()):
        v = np.asarray(values, dtype=float)
        v = v[np.isfinite(v).all(1)]
        if len(v) == 0:
            continue
        diff = np.abs(v[:, 0] - v[:, 1])
        lines.append(f"| {pair} | {v[:, 0].mean():.4f} | {v[:, 1].mean():.4f} | {diff.mean():.4f} | {diff.max():.4f} |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--vit-base", action="store_true")
    parser.add_argument("--limit", type=int, help="images of the study (all by default)")
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args()
    results, seconds = {}, {}
    model = "vit_base" if args.vit_base else "toy"
    with tempfile.TemporaryDirectory() as out:
        for precision in PRECISIONS:  # warm-up: the device's first kernels and allocations are not timed
            cafe_core.run(quickstart_study(model, args.device, precision, 1), pathlib.Path(out) / f"warm-{precision}",
                          progress=False)
        for precision in PRECISIONS:
            name = precision or "float32"
            start = time.perf_counter()
            results[name] = cafe_core.run(quickstart_study(model, args.device, precision, args.limit),
                                          pathlib.Path(out) / name, progress=False)
            seconds[name] = time.perf_counter() - start
        lines = [f"## autocast on {'vit_base' if args.vit_base else 'the quickstart'}, device {args.device}", ""]
        report = {}
        for precision in PRECISIONS[1:]:
            comparison = compare(results["float32"], results[precision])
            report[precision] = {"seconds": seconds[precision], "comparison": comparison}
            lines += summarise(precision, comparison, seconds[precision], seconds["float32"])
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"float32_seconds": seconds["float32"], **report}))


if __name__ == "__main__":
    main()
