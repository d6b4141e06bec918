"""Measure where AttnLRP's relevance goes on the default model, layer by layer and block by block.

For each patch-token SAE of the default (layers 0, 2, 3), the quickstart's targets (on the 16 images of seed
4: per image the two most active latents and two drawn at random among the active ones, each read at its most
active patch token) are explained with AttnLRP in float64, and each ``z`` is split into its parts with
:func:`cafe_attnlrp.budget.relevance_budget`: the heatmap (the input's relevance), the SAE encoder's biases,
the embedding (patch-embedding bias, class token, position embedding), the biases of the blocks' LayerNorms,
attention and MLP, and what each block's softmax does not pass on (AttnLRP's conservation error). The parts
are measured apart; their sum is checked against ``z`` and the softmax terms against the attributor's own
``conservation_error``.

With ``--floor F`` the targets below ``F`` times their latent's largest value over the images are left out
as well (the run spec's ``min_relative_activation``), and both are reported.

Usage (from the repository root)::

    .venv/bin/python plugins/cafe-plugin-toy/training/conservation.py --out plugins/cafe-plugin-toy/training/logs/conservation.json
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
import torch

from cafe_attnlrp.attributor import AttnLRP
from cafe_attnlrp.budget import relevance_budget
from cafe_core.protocols import RunContext, TargetFunction
from cafe_core.selection import select_targets
from cafe_shapes import ShapesDataset
from cafe_toy.components import toy_sae, toy_vit

LAYERS = (0, 2, 3)


def quickstart_targets(backbone, sae, layer: int, x: torch.Tensor, image_ids: list[str], seed: int = 0):
    """The quickstart's two rules on these images: ``(rows, latents, positions, activations, scales)``."""
    with torch.no_grad():
        codes = sae.encode(backbone.forward_to(x, layer))
    n_prefix = len(backbone.prefix_tokens)
    scales = codes[:, n_prefix:].amax(dim=(0, 1))  # each latent's largest value at a patch token
    chosen = {}
    for select in ("top", "random"):
        for record in select_targets(
            codes, image_ids=image_ids, sae="toy_sae", layer=layer, backbone=backbone, latents=None,
            select=select, count=2, position=None, min_activation=0.0, seed=seed,
        ):
            chosen.setdefault(record.key, record)
    keys = sorted(chosen)
    rows = [image_ids.index(k.image_id) for k in keys]
    latents = [k.latent for k in keys]
    return rows, latents, [k.position for k in keys], [chosen[k].activation for k in keys], scales[latents]


def summarise(budget: dict[str, np.ndarray], depth: int, keep: np.ndarray) -> dict:
    """Per layer: the relative error's median and range, and each part's share of the summed ``z``."""
    z = budget["z"][keep]
    error = sum(budget[f"block{b}.softmax"] for b in range(depth))[keep]
    relative = np.abs(error) / np.abs(z)
    total = z.sum()

    def share(*names: str) -> float:
        return float(sum(budget[name][keep].sum() for name in names) / total)

    blocks = [f"block{b}" for b in range(depth)]
    return {
        "targets": int(keep.sum()),
        "relative_error": {
            "median": float(np.median(relative)), "min": float(relative.min()), "max": float(relative.max()),
        },
        "share_of_z": {
            "input": share("input"),
            "sae_biases": share("sae_biases"),
            "embedding": share("patch_embed_bias", "class_tokens", "pos_embed"),
            "block_biases": share(*(f"{b}.{p}" for b in blocks for p in ("norm_biases", "attention_biases", "mlp_biases"))),
            "softmax": share(*(f"{b}.softmax" for b in blocks)),
        },
        "per_block": [
            {
                "block": b,
                "softmax_share_of_z": share(f"block{b}.softmax"),
                "biases_share_of_z": share(*(f"block{b}.{p}" for p in ("norm_biases", "attention_biases", "mlp_biases"))),
                "softmax_lost_of_received": float(
                    budget[f"block{b}.softmax"][keep].sum() / budget[f"block{b}.softmax_received"][keep].sum()
                ),
            }
            for b in range(depth)
        ],
        "largest_residual_of_z": float(
            max(np.abs(budget[name][keep] / z).max() for name in budget if name.endswith("residual"))
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--floor", type=float, default=0.1, help="relative floor reported beside no floor")
    parser.add_argument("--out", type=pathlib.Path, default=None)
    args = parser.parse_args()

    backbone = toy_vit().to(dtype=torch.float64)
    dataset = ShapesDataset(size=args.images, seed=4)
    items = [dataset[i] for i in range(len(dataset))]
    x = backbone.preprocess([item.image for item in items]).to(torch.float64)
    image_ids = [item.image_id for item in items]
    context = RunContext(batch_size=64, dtype=torch.float64)
    report = {"images": args.images, "floor": args.floor, "layers": {}}
    for layer in LAYERS:
        sae = toy_sae(layer).to(dtype=torch.float64)
        rows, latents, positions, activations, scales = quickstart_targets(backbone, sae, layer, x, image_ids)
        target = TargetFunction(backbone, sae, layer, latents, positions)
        xs = x[rows]
        budget = {k: v.numpy() for k, v in relevance_budget(target, xs).items()}
        info = AttnLRP().attribute(target, xs, context).info
        softmax = sum(budget[f"block{b}.softmax"] for b in range(layer + 1))
        agreement = float(np.abs(softmax - info["conservation_error"].numpy()).max() / np.abs(budget["z"]).max())
        relative_z = np.asarray(activations) / scales.numpy()
        everything = np.ones(len(rows), dtype=bool)
        report["layers"][str(layer)] = {
            "all": summarise(budget, layer + 1, everything),
            "above_floor": summarise(budget, layer + 1, relative_z >= args.floor),
            "softmax_vs_attributor_error_of_z": agreement,
            "z_over_latent_max": sorted(float(v) for v in relative_z),
        }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
