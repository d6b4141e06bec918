"""What a run returns: the tidy score table, with heatmaps and curves one call away."""

from __future__ import annotations

import csv
import math
import pathlib
import statistics
from typing import Any

import numpy as np

from .records import TargetKey
from .store import RunStore

__all__ = ["Results"]


class Results:
    """The results of a run, read from its run directory.

    Attributes
    ----------
    directory : pathlib.Path
        The run directory.
    rows : list of dict
        The tidy table: one row per image, layer, latent, position, attributor and metric, with ``score``,
        the target's ``activation`` and any per-row diagnostics as ``info.<name>`` columns.
    targets : list of dict
        Every target considered, including those skipped as inactive (``status``).
    """

    def __init__(self, directory: str | pathlib.Path) -> None:
        self.directory = pathlib.Path(directory)
        with RunStore.open_existing(self.directory) as store:
            targets = store.targets()
            scores = store.scores()
            heatmaps = store.heatmap_records(arrays=False)
            self.higher_is_better: dict[str, bool] = store.get_meta("higher_is_better") or {}
        self.targets = [
            {**vars(t.key), "position_name": t.position_name, "activation": t.activation, "status": t.status}
            for t in targets
        ]
        by_key = {t.key: t for t in targets}
        self.rows = [
            {
                **vars(s.key),
                "position_name": by_key[s.key].position_name,
                "activation": by_key[s.key].activation,
                "attributor": s.attributor,
                "metric": s.metric,
                "score": s.score,
                **{f"info.{k}": v for k, v in s.info.items()},
            }
            for s in scores
            if s.key in by_key
        ]
        self.heatmap_index = [
            {**vars(h.key), "attributor": h.attributor, **{f"info.{k}": v for k, v in h.info.items()}}
            for h in heatmaps
        ]

    @classmethod
    def load(cls, directory: str | pathlib.Path) -> "Results":
        """Read the results of a (finished or partial) run directory."""
        return cls(directory)

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"Results({str(self.directory)!r}, rows={len(self.rows)}, targets={len(self.targets)})"

    def heatmap(self, image_id: str, layer: int, latent: int, position: int, attributor: str) -> np.ndarray:
        """The heatmap ``[gh, gw]`` of one target and attributor."""
        with RunStore.open_existing(self.directory) as store:
            found = store.heatmap(TargetKey(image_id, layer, latent, position), attributor)
        if found is None:
            raise KeyError(f"no heatmap for {(image_id, layer, latent, position)} by {attributor!r}")
        return found

    def curve(
        self, image_id: str, layer: int, latent: int, position: int, attributor: str, metric: str
    ) -> dict[str, np.ndarray | None]:
        """``{"curve", "raw_curve", "fractions"}`` of one score."""
        with RunStore.open_existing(self.directory) as store:
            found = store.curve(TargetKey(image_id, layer, latent, position), attributor, metric)
        if found is None:
            raise KeyError(f"no {metric!r} curve for {(image_id, layer, latent, position)} by {attributor!r}")
        return found

    def summary(self) -> list[dict[str, Any]]:
        """Per attributor and metric: count, mean, standard error, median of the finite scores."""
        groups: dict[tuple[str, str], list[float]] = {}
        missing: dict[tuple[str, str], int] = {}
        for row in self.rows:
            key = (row["attributor"], row["metric"])
            groups.setdefault(key, [])
            if math.isfinite(row["score"]):
                groups[key].append(row["score"])
            else:
                missing[key] = missing.get(key, 0) + 1
        table = []
        for (attributor, metric), scores in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            n = len(scores)
            table.append(
                {
                    "attributor": attributor,
                    "metric": metric,
                    "n": n,
                    "undefined": missing.get((attributor, metric), 0),
                    "mean": statistics.fmean(scores) if n else float("nan"),
                    "sem": statistics.stdev(scores) / math.sqrt(n) if n > 1 else float("nan"),
                    "median": statistics.median(scores) if n else float("nan"),
                    "higher_is_better": self.higher_is_better.get(metric),
                }
            )
        return table

    def format_summary(self) -> str:
        """The summary as an aligned text table (arrows show which direction is better)."""
        lines = [f"{'metric':<18} {'attributor':<24} {'n':>5} {'mean':>8} {'± sem':>8} {'median':>8}"]
        for row in self.summary():
            arrow = {True: " ↑", False: " ↓"}.get(row["higher_is_better"], "")
            lines.append(
                f"{row['metric'] + arrow:<18} {row['attributor']:<24} {row['n']:>5} {row['mean']:>8.4f} "
                f"{row['sem']:>8.4f} {row['median']:>8.4f}"
            )
        skipped = sum(1 for t in self.targets if t["status"] != "explained")
        lines.append(f"{len(self.targets)} targets considered, {skipped} skipped as inactive")
        return "\n".join(lines)

    def to_csv(self, path: str | pathlib.Path | None = None) -> pathlib.Path:
        """Write the tidy table as CSV (default ``<run dir>/results.csv``)."""
        path = pathlib.Path(path) if path is not None else self.directory / "results.csv"
        columns: list[str] = []
        for row in self.rows:
            columns.extend(c for c in row if c not in columns)
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns or ["image_id"])
            writer.writeheader()
            writer.writerows(self.rows)
        return path

    def to_pandas(self):  # pragma: no cover - optional dependency
        """The tidy table as a pandas DataFrame (requires pandas)."""
        import pandas as pd

        return pd.DataFrame(self.rows)
