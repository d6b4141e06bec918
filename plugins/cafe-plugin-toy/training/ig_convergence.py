"""Measure how far Integrated Gradients is from completeness on the quickstart's targets.

The targets are those a quickstart run selected (its run directory's targets, explained ones only). For
each setting, every target is explained with ``integrated_gradients`` and its relative completeness delta
``|sum(heatmap) - (f(x) - f(x0))| / |f(x) - f(x0)|`` is read from the attributor's ``info``, where ``f`` is
the latent (``quantity = "post"``, its path starting at the blank or at the latent's onset) or its
pre-activation (``"pre"``); the median and maximum over targets are printed.

Usage (from the repository root, after a quickstart run into runs/quickstart)::

    .venv/bin/python plugins/cafe-plugin-toy/training/ig_convergence.py runs/quickstart
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import cafe_core
from cafe_captum.integrated_gradients import IntegratedGradients
from cafe_core.protocols import RunContext, TargetFunction
from cafe_shapes import ShapesDataset
from cafe_toy.components import toy_sae, toy_vit

SETTINGS = [
    ("post", "blank", 32), ("post", "blank", 64), ("post", "blank", 128), ("post", "blank", 256),
    ("pre", "blank", 16), ("pre", "blank", 32), ("pre", "blank", 64),
    ("post", "onset", 8), ("post", "onset", 16), ("post", "onset", 32),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--only", nargs="*", help="settings to measure, as quantity/start (post/onset...)")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)

    results = cafe_core.Results.load(args.run_dir)
    spec = json.loads((results.directory / "spec.json").read_text())
    data = spec["dataset"]
    targets = [t for t in results.targets if t["status"] == "explained"]
    layer = targets[0]["layer"]
    backbone, sae = toy_vit().to(dtype=dtype), toy_sae(layer).to(dtype=dtype)
    dataset = ShapesDataset(size=data["size"], seed=data["seed"])
    items = {dataset[i].image_id: dataset[i].image for i in range(len(dataset))}
    x = backbone.preprocess([items[t["image_id"]] for t in targets]).to(dtype)
    target = TargetFunction(backbone, sae, layer, [t["latent"] for t in targets], [t["position"] for t in targets])
    context = RunContext(batch_size=spec["run"]["batch_size"], dtype=dtype)
    out = {}
    for quantity, path_start, steps in SETTINGS:
        if args.only and f"{quantity}/{path_start}" not in args.only:
            continue
        start = time.perf_counter()
        method = IntegratedGradients(n_steps=steps, quantity=quantity, start=path_start)
        info = method.attribute(target, x, context).info
        relative = info["relative_delta"].double().numpy()
        found = out[f"{quantity}/{path_start}/{steps}"] = {
            "median": float(np.nanmedian(relative)), "max": float(np.nanmax(relative)),
            "above_0.01": int((relative > 0.01).sum()), "targets": len(relative),
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(f"{quantity:>4} from the {path_start:<5} {steps:>4} steps: relative delta median {found['median']:.4f}, "
              f"max {found['max']:.4f}, above 0.01: {found['above_0.01']}/{len(relative)} ({found['seconds']} s)",
              flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
