"""Turn a pytest-benchmark JSON file into the markdown table of benchmarks/README.md.

Usage: python benchmarks/report.py benchmarks/latest.json

Times are medians per item (heatmap, curve or target: the ``per`` of each benchmark). Within each group the
ratio column divides by the group's reference (gradient_x_input, the looped or shared mode, the cafe way,
the hand loop, the deepest layer), measured in the same run.
"""

from __future__ import annotations

import json
import sys

REFERENCES = (
    "method=gradient_x_input", "mode=looped", "mode=shared", "way=cafe_insertion", "way=hand_loop", "layer=11",
    "way=inprocess",
)


def label(extra: dict) -> str:
    keys = ("method", "mode", "way", "steps", "layer", "k")
    return ", ".join(f"{k}={extra[k]}" for k in keys if k in extra)


def main(path: str) -> None:
    data = json.load(open(path))
    machine = data.get("machine_info", {})
    print(f"Machine: {machine.get('cpu', {}).get('brand_raw', machine.get('processor', '?'))}, "
          f"{machine.get('cpu', {}).get('count', '?')} CPUs; {data.get('datetime', '')}\n")
    groups: dict[str, list[dict]] = {}
    for bench in data["benchmarks"]:
        groups.setdefault(bench["group"], []).append(bench)
    for group, benches in groups.items():
        rows = []
        for bench in benches:
            extra = bench["extra_info"]
            per_item = bench["stats"]["median"] / extra.get("items", 1)
            rows.append((label(extra), per_item, extra.get("peak_bytes"), extra.get("per", "call")))
        reference = next((r[1] for r in rows if any(ref in r[0] for ref in REFERENCES)), None)
        print(f"**{group}**\n")
        print("| variant | time per " + rows[0][3] + " | ratio | peak memory |")
        print("| --- | ---: | ---: | ---: |")
        for name, per_item, peak, _ in sorted(rows, key=lambda r: r[1]):
            ratio = f"{per_item / reference:.2f}x" if reference else ""
            memory = f"{peak / 2**20:.0f} MiB" if peak is not None else ""
            print(f"| {name} | {per_item * 1000:.2f} ms | {ratio} | {memory} |")
        print()


if __name__ == "__main__":
    main(sys.argv[1])
