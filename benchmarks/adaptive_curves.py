"""Adaptive against full resolution of the insertion and deletion curves, on the heatmaps of one run.

Runs a spec (the quickstart by default, on its first ``--limit`` images) with its ``insertion`` and
``deletion`` metrics each replaced by the full-resolution metric and the adaptive one at every ``--tolerance``
and ``--initial-stride``, so all of them score the same heatmaps. Prints, per metric and tolerance, the mean and largest absolute
difference of the score from full resolution, how often that difference exceeds the reported bound (possible
only where the curve is not monotone between evaluated points), the fraction of curve points evaluated and of
composites forwarded, and the wall time of the metric's calls.

``python benchmarks/adaptive_curves.py [SPEC] [--limit 4] [--tolerance 0.01 0.05] [--initial-stride 8]``
"""

from __future__ import annotations

import argparse
import collections
import contextvars
import tempfile
import time
import tomllib

import numpy as np

import cafe_core
import cafe_faithfulness.curves as curves

_current = contextvars.ContextVar("metric", default="")


def _label(name: str, tolerance: float | None = None, stride: int | None = None) -> str:
    return f"{name}@full" if tolerance is None else f"{name}@{tolerance:g}/{stride}"


def _metrics(tolerances: list[float], strides: list[int]) -> list[dict]:
    """``insertion`` and ``deletion`` at full resolution and adaptive at each tolerance and initial stride."""
    metrics = []
    for name in ("insertion", "deletion"):
        metrics.append({"name": name, "label": _label(name)})
        for stride in strides:
            for tolerance in tolerances:
                metrics.append({
                    "name": name,
                    "label": _label(name, tolerance, stride),
                    "resolution": "adaptive",
                    "tolerance": tolerance,
                    "initial_stride": stride,
                })
    return metrics


def _instrument(seconds: dict, points: dict, forwards: dict) -> None:
    """Time every curve metric call and count the points it reads and the composites it forwards."""
    evaluate, shared = curves.PatchCurve.evaluate, curves.latents_on_shared_images

    def timed(self, *args, **kwargs):
        adaptive = self.resolution == "adaptive"
        label = _label(self.name, self.tolerance if adaptive else None, self.initial_stride)
        token = _current.set(label)
        start = time.perf_counter()
        try:
            return evaluate(self, *args, **kwargs)
        finally:
            seconds[label] += time.perf_counter() - start
            _current.reset(token)

    def counting(readers, image_of_reader, n_images, make_images, context):
        points[_current.get()] += len(readers)
        forwards[_current.get()] += n_images
        return shared(readers, image_of_reader, n_images, make_images, context)

    curves.PatchCurve.evaluate = timed
    curves.latents_on_shared_images = counting


def _scores(rows: list[dict], metric: str) -> dict[tuple, dict]:
    keys = ("image_id", "sae", "layer", "latent", "position", "attributor")
    return {tuple(row[k] for k in keys): row for row in rows if row["metric"] == metric}


def main(spec_path: str, limit: int, tolerances: list[float], strides: list[int]) -> None:
    with open(spec_path, "rb") as file:
        spec = tomllib.load(file)
    spec["run"] = {**spec.get("run", {}), "limit": limit}
    spec["metrics"] = _metrics(tolerances, strides)
    seconds, points, forwards = (collections.defaultdict(float) for _ in range(3))
    _instrument(seconds, points, forwards)
    with tempfile.TemporaryDirectory() as out:
        rows = cafe_core.run(spec, out, progress=False).rows

    print(f"{'metric@tolerance/initial stride':32} {'curves':>6} {'mean |d|':>9} {'max |d|':>9} {'|d| > bound':>11} {'points':>7} "
          f"{'forwards':>8} {'seconds':>8}")
    for name in ("insertion", "deletion"):
        full = _scores(rows, f"{name}@full")
        print(f"{_label(name):32} {len(full):6d} {'':9} {'':9} {'':11} {'100%':>7} {'100%':>8} "
              f"{seconds[_label(name)]:8.2f}")
        for label in (_label(name, t, s) for s in strides for t in tolerances):
            adaptive = _scores(rows, label)
            pairs = [(full[k], adaptive[k]) for k in adaptive if np.isfinite(full[k]["score"])]
            diff = np.array([abs(a["score"] - f["score"]) for f, a in pairs])
            bound = np.array([a["info.auc_error_bound"] for _, a in pairs])
            print(f"{label:32} {len(pairs):6d} {diff.mean():9.5f} {diff.max():9.5f} "
                  f"{np.mean(diff > bound + 1e-6):11.1%} {points[label] / points[_label(name)]:7.1%} "
                  f"{forwards[label] / forwards[_label(name)]:8.1%} {seconds[label]:8.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="?", default="examples/quickstart.toml")
    parser.add_argument("--limit", type=int, default=4, help="images of the spec's dataset to use")
    parser.add_argument("--tolerance", type=float, nargs="+", default=[0.01, 0.05])
    parser.add_argument("--initial-stride", type=int, nargs="+", default=[8])
    arguments = parser.parse_args()
    main(arguments.spec, arguments.limit, arguments.tolerance, arguments.initial_stride)
