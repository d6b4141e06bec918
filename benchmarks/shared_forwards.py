"""How many forward passes sharing saves: points of every insertion and deletion curve vs distinct composites.

Runs a spec (the quickstart by default) with ``latents_on_shared_images`` counting, per call, the readers
(curve points, occlusion rows) and the distinct images actually forwarded, and prints both per metric call
site. ``python benchmarks/shared_forwards.py [SPEC]``.
"""

from __future__ import annotations

import collections
import sys
import tempfile
import traceback

import cafe_core
import cafe_core.shared_forward as shared_forward


def main(spec: str) -> None:
    counts: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    original = shared_forward.latents_on_shared_images

    def counting(readers, image_of_reader, n_images, make_images, context):
        caller = traceback.extract_stack(limit=2)[0]
        site = f"{caller.filename.rsplit('/', 1)[-1]}:{caller.name}"
        counts[site][0] += len(readers)
        counts[site][1] += n_images
        return original(readers, image_of_reader, n_images, make_images, context)

    import cafe_baselines.occlusion as occlusion  # the callers imported the function by name
    import cafe_faithfulness.curves as curves

    curves.latents_on_shared_images = occlusion.latents_on_shared_images = counting
    with tempfile.TemporaryDirectory() as out:
        cafe_core.run(spec, out, progress=False)
    print(f"{'call site':40} {'points':>10} {'forwards':>10} {'saved':>8}")
    for site, (points, forwards) in sorted(counts.items()):
        print(f"{site:40} {points:10d} {forwards:10d} {1 - forwards / points:8.1%}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "examples/quickstart.toml")
