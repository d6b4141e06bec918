"""AttnLRP and CP-LRP against gradient x input, timed with their calls interleaved.

Usage: python benchmarks/interleaved.py [repeats]

pytest-benchmark times one method after the other, so load that comes and goes on a shared machine shifts
their ratios. Here each repeat calls the three methods in turn on the same targets, and the ratio of the
fastest call of each method is printed per setting.
"""

from __future__ import annotations

import sys
import time

import torch

from cafe_core.plugins import PluginHost
from conftest import _toy, _vit_small, context

METHODS = ("gradient_x_input", "attnlrp", "cp_lrp")
SETTINGS = (("toy", 1), ("toy", 16), ("vit_small", 1), ("vit_small", 16))


def main(repeats: int) -> None:
    host = PluginHost()
    setups = {"toy": _toy(host), "vit_small": _vit_small(host)}
    attributors = {name: host.registry("attributor").get(name).build({}) for name in METHODS}
    print(f"fastest of {repeats} interleaved calls, per heatmap; torch threads: {torch.get_num_threads()}\n")
    print("| setting | " + " | ".join(METHODS) + " | ratios to gradient_x_input |")
    print("| --- |" + " ---: |" * (len(METHODS) + 1))
    for model, batch in SETTINGS:
        target, x = setups[model].target(batch)
        best = {name: float("inf") for name in METHODS}
        for _ in range(repeats):
            for name, attributor in attributors.items():
                start = time.perf_counter()
                attributor.attribute(target, x, context(16))
                best[name] = min(best[name], (time.perf_counter() - start) / batch)
        times = " | ".join(f"{best[name] * 1000:.2f} ms" for name in METHODS)
        ratios = ", ".join(f"{best[name] / best[METHODS[0]]:.2f}x" for name in METHODS[1:])
        print(f"| {model} batch {batch} | {times} | {ratios} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 11)
