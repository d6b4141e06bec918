"""How many forward passes sharing saves: points read vs distinct images forwarded, per call site.

Runs the quickstart's study (on the default model, or over a timm ViT with random weights) counting, per
call site, the points read (curve points, occluded copies, the values of integrated gradients at both ends
of its paths and the points of its onset search) and the distinct images actually forwarded.

``python benchmarks/shared_forwards.py [--model toy|vit_small|vit_base] [--limit N] [--count-only]``

``--count-only`` counts the composites of insertion and deletion without forwarding them (their scores are
then meaningless): which composites are distinct depends on the heatmaps only, so this measures the share
saved on a model whose curves would take hours on a CPU.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import traceback

import torch

import cafe_core
import cafe_core.shared_forward as shared_forward
from cafe_core.gradients import identical_rows
from studies import RANDOM_VITS, quickstart_study


def main(model: str, limit: int | None, count_only: bool, batch_size: int) -> None:
    counts: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    original = shared_forward.latents_on_shared_images

    def counting(readers, image_of_reader, n_images, make_images, context):
        caller = traceback.extract_stack(limit=2)[0]
        site = f"{caller.filename.rsplit('/', 1)[-1]}:{caller.name}"
        counts[site][0] += len(readers)
        counts[site][1] += n_images
        if count_only and site.startswith("curves.py"):
            return torch.zeros(len(readers))
        return original(readers, image_of_reader, n_images, make_images, context)

    import cafe_baselines.occlusion as occlusion  # the callers imported the functions by name
    import cafe_captum.integrated_gradients as integrated_gradients
    import cafe_faithfulness.curves as curves

    values = integrated_gradients.row_values

    def counting_values(target, x, context, quantity="post"):
        counts["integrated_gradients.py:row_values"][0] += len(x)
        counts["integrated_gradients.py:row_values"][1] += len(identical_rows(x)[0])
        return values(target, x, context, quantity)

    curves.latents_on_shared_images = occlusion.latents_on_shared_images = counting
    integrated_gradients.row_values = counting_values
    with tempfile.TemporaryDirectory() as out:
        cafe_core.run(quickstart_study(model, "cpu", limit=limit, batch_size=batch_size), out, progress=False)
    print(f"{'call site':40} {'points':>10} {'forwards':>10} {'saved':>8}")
    for site, (points, forwards) in sorted(counts.items()):
        print(f"{site:40} {points:10d} {forwards:10d} {1 - forwards / points:8.1%}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["toy", *RANDOM_VITS], default="toy")
    parser.add_argument("--limit", type=int, help="images of the study (all 16 by default)")
    parser.add_argument("--count-only", action="store_true",
                        help="count the curves' composites, do not forward them")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    main(args.model, args.limit, args.count_only, args.batch_size)
