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

__all__ = ["DIAGNOSTICS", "Results", "heatmap_diagnostics"]


DIAGNOSTICS: dict[str, tuple[str, str | None]] = {
    "completeness |delta|/|f(x)-f(x0)|": ("relative_delta", None),
    "conservation |error|/|z|": ("conservation_error", "z"),
}
"""The per-heatmap relative errors a summary reports: its name -> (the ``info`` key, the key it is divided by,
in absolute value, or ``None``). ``relative_delta`` is what Integrated Gradients reports (its completeness
delta relative to ``f(x) - f(x0)``), ``conservation_error`` and ``z`` what AttnLRP and CP-LRP report."""


def heatmap_diagnostics(heatmaps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The median and largest of each :data:`DIAGNOSTICS` value, per SAE and attributor.

    Parameters
    ----------
    heatmaps : list of dict
        One per heatmap: ``sae``, ``attributor`` and ``info.<name>`` values (as :attr:`Results.heatmap_index`).

    Returns
    -------
    list of dict
        ``diagnostic``, ``sae``, ``attributor``, ``n``, ``median``, ``max``, sorted by diagnostic, SAE and
        attributor; only attributors that report the value.
    """
    found: dict[tuple[str, str, str], list[float]] = {}
    for row in heatmaps:
        for name, (key, scale) in DIAGNOSTICS.items():
            value = row.get(f"info.{key}")
            if value is None:
                continue
            if scale is not None:
                denominator = row.get(f"info.{scale}")
                value = abs(value) / abs(denominator) if denominator else float("nan")
            if math.isfinite(value):
                found.setdefault((name, row["sae"], row["attributor"]), []).append(abs(value))
    return [
        {"diagnostic": name, "sae": sae, "attributor": attributor, "n": len(values),
         "median": statistics.median(values), "max": max(values)}
        for (name, sae, attributor), values in sorted(found.items())
    ]


class Results:
    """The results of a run, read from its run directory.

    Attributes
    ----------
    directory : pathlib.Path
        The run directory.
    rows : list of dict
        The tidy table: one row per image, SAE (its label), layer, latent, position, attributor and metric,
        with ``score``, the target's ``activation`` and any per-row diagnostics as ``info.<name>`` columns.
        Images no longer in the dataset when the run last resumed are left out.
    targets : list of dict
        Every target considered, including those not explained (``status``: ``"inactive"``, or
        ``"below_floor"`` under the rule's ``min_relative_activation``).
    execution : ExecutionReport or None
        How the units of the :func:`cafe_core.run` call that returned these results were executed (units
        done, retried, failed); ``None`` for results loaded from a directory.
    """

    def __init__(self, directory: str | pathlib.Path) -> None:
        self.directory = pathlib.Path(directory)
        self.execution: Any = None
        with RunStore.open_existing(self.directory) as store:
            targets = store.targets()
            scores = store.scores()
            heatmaps = store.heatmap_records(arrays=False)
            self.higher_is_better: dict[str, bool] = store.get_meta("higher_is_better") or {}
            listed = store.listed_images()
        if listed is not None:  # images no longer in the dataset are not reported
            targets = [t for t in targets if t.key.image_id in listed]
            scores = [s for s in scores if s.key.image_id in listed]
            heatmaps = [h for h in heatmaps if h.key.image_id in listed]
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

    @property
    def saes(self) -> list[str]:
        """The labels of the run's SAEs that have targets, sorted."""
        return sorted({t["sae"] for t in self.targets})

    def key(self, image_id: str, layer: int, latent: int, position: int, sae: str | None = None) -> TargetKey:
        """The key of a target; ``sae`` (an SAE's label) may be left out when the run has one SAE.

        Raises
        ------
        KeyError
            If ``sae`` is left out and the run has several SAEs.
        """
        if sae is None:
            if len(self.saes) > 1:
                raise KeyError(f"this run has several SAEs ({', '.join(self.saes)}); pass sae=<label> to choose one")
            sae = self.saes[0] if self.saes else ""
        return TargetKey(image_id, sae, layer, latent, position)

    def heatmap(
        self, image_id: str, layer: int, latent: int, position: int, attributor: str, *, sae: str | None = None
    ) -> np.ndarray:
        """The heatmap ``[gh, gw]`` of one target and attributor (``sae``: see :meth:`key`)."""
        key = self.key(image_id, layer, latent, position, sae)
        with RunStore.open_existing(self.directory) as store:
            found = store.heatmap(key, attributor)
        if found is None:
            raise KeyError(f"no heatmap for {key} by {attributor!r}")
        return found

    def curve(
        self, image_id: str, layer: int, latent: int, position: int, attributor: str, metric: str,
        *, sae: str | None = None,
    ) -> dict[str, np.ndarray | None]:
        """``{"curve", "raw_curve", "fractions"}`` of one score (``sae``: see :meth:`key`)."""
        key = self.key(image_id, layer, latent, position, sae)
        with RunStore.open_existing(self.directory) as store:
            found = store.curve(key, attributor, metric)
        if found is None:
            raise KeyError(f"no {metric!r} curve for {key} by {attributor!r}")
        return found

    def summary(self) -> list[dict[str, Any]]:
        """Per SAE, attributor and metric: count, mean, standard error, median of the finite scores.

        Scores that are NaN (undefined for their target, e.g. a locality metric on a class-token target) are
        counted as ``undefined`` and left out of the statistics.
        """
        groups: dict[tuple[str, str, str], list[float]] = {}
        missing: dict[tuple[str, str, str], int] = {}
        for row in self.rows:
            key = (row["sae"], row["attributor"], row["metric"])
            groups.setdefault(key, [])
            if math.isfinite(row["score"]):
                groups[key].append(row["score"])
            else:
                missing[key] = missing.get(key, 0) + 1
        table = []
        for (sae, attributor, metric), scores in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])):
            n = len(scores)
            table.append(
                {
                    "sae": sae,
                    "attributor": attributor,
                    "metric": metric,
                    "n": n,
                    "undefined": missing.get((sae, attributor, metric), 0),
                    "mean": statistics.fmean(scores) if n else float("nan"),
                    "sem": statistics.stdev(scores) / math.sqrt(n) if n > 1 else float("nan"),
                    "median": statistics.median(scores) if n else float("nan"),
                    "higher_is_better": self.higher_is_better.get(metric),
                }
            )
        return table

    def format_summary(self) -> str:
        """The summary as an aligned text table (arrows show which direction is better).

        A run of several SAEs has an ``sae`` column; a run with undefined scores an ``undef`` column.
        """
        summary = self.summary()
        several = len({row["sae"] for row in summary}) > 1
        undefined = any(row["undefined"] for row in summary)
        sae_width = max([len("sae"), *(len(row["sae"]) for row in summary)]) if several else 0
        header = f"{'metric':<18} " + (f"{'sae':<{sae_width}} " if several else "")
        header += f"{'attributor':<24} {'n':>5}" + (f" {'undef':>5}" if undefined else "")
        lines = [header + f" {'mean':>8} {'± sem':>8} {'median':>8}"]
        for row in summary:
            arrow = {True: " ↑", False: " ↓"}.get(row["higher_is_better"], "")
            line = f"{row['metric'] + arrow:<18} " + (f"{row['sae']:<{sae_width}} " if several else "")
            line += f"{row['attributor']:<24} {row['n']:>5}" + (f" {row['undefined']:>5}" if undefined else "")
            lines.append(line + f" {row['mean']:>8.4f} {row['sem']:>8.4f} {row['median']:>8.4f}")
        diagnostics = self.diagnostics()
        if diagnostics:
            width = max(len(row["diagnostic"]) for row in diagnostics)
            lines.append(f"{'relative error':<{width}} " + (f"{'sae':<{sae_width}} " if several else "")
                         + f"{'attributor':<24} {'n':>5} {'median':>8} {'max':>8}")
            for row in diagnostics:
                line = f"{row['diagnostic']:<{width}} " + (f"{row['sae']:<{sae_width}} " if several else "")
                lines.append(line + f"{row['attributor']:<24} {row['n']:>5} {row['median']:>8.3g} {row['max']:>8.3g}")
        statuses = [t["status"] for t in self.targets]
        line = f"{len(statuses)} targets considered, {statuses.count('inactive')} skipped as inactive"
        below = statuses.count("below_floor")
        lines.append(line + (f", {below} below the floor (min_relative_activation)" if below else ""))
        return "\n".join(lines)

    def diagnostics(self) -> list[dict[str, Any]]:
        """Per SAE and attributor, the median and largest of each relative error its heatmaps report.

        Read from the heatmaps' ``info`` (see :data:`DIAGNOSTICS`): an Integrated Gradients heatmap's relative
        completeness delta, an LRP heatmap's conservation error relative to ``z``. Rows whose value is not
        finite are left out.
        """
        return heatmap_diagnostics(self.heatmap_index)

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
