"""What a report reads from a run directory: its spec, targets, scores, heatmaps and settings."""

from __future__ import annotations

import pathlib
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cafe_core.records import ScoreRecord, TargetKey, TargetRecord
from cafe_core.spec import RunSpec, stored_spec_data
from cafe_core.store import RunStore

from .rebuild import stored_spec

__all__ = ["RunData", "read_run"]


@dataclass
class RunData:
    """The contents of a run directory that a report shows.

    Attributes
    ----------
    directory : pathlib.Path
    spec : RunSpec
        The spec the run was made with (as stored in its run store).
    targets : list of TargetRecord
        Every target considered, in store order (images no longer in the dataset's listing left out, as
        :class:`cafe_core.results.Results` leaves them out).
    scores : dict
        ``{(target key, attributor, metric): ScoreRecord}``.
    higher_is_better : dict
        Each metric's direction.
    seed : int
        The run's seed.
    versions : dict
        Versions of cafe and the plugins the run used.
    image_index : dict
        The dataset index of each image, where the store records it.
    heatmap_info : list of dict
        Per stored heatmap: ``sae``, ``attributor`` and its ``info.<name>`` values (the attributor's
        diagnostics, such as AttnLRP's ``conservation_error``), as :attr:`cafe_core.results.Results.heatmap_index`.
    """

    directory: pathlib.Path
    spec: RunSpec
    raw_spec: dict[str, Any]
    targets: list[TargetRecord]
    scores: dict[tuple[TargetKey, str, str], ScoreRecord]
    higher_is_better: dict[str, bool | None]
    seed: int
    versions: dict[str, Any] = field(default_factory=dict)
    image_index: dict[str, int] = field(default_factory=dict)
    heatmap_info: list[dict[str, Any]] = field(default_factory=list)

    @property
    def explained(self) -> list[TargetRecord]:
        """The targets that were explained (not inactive)."""
        return [t for t in self.targets if t.explained]

    @property
    def attributors(self) -> list[str]:
        """Attributor labels in spec order."""
        return [a.display_name for a in self.spec.attributors]

    @property
    def metrics(self) -> list[str]:
        """Metric labels in spec order."""
        return [m.display_name for m in self.spec.metrics]

    def labels_named(self, name: str, section: str = "attributors") -> list[str]:
        """Labels of the components of a section registered as ``name``."""
        return [c.display_name for c in getattr(self.spec, section) if c.name == name]

    def metric_params(self, label: str) -> dict[str, Any]:
        """The params a metric label was given in the spec."""
        return next((m.params for m in self.spec.metrics if m.display_name == label), {})


def read_run(directory: str | pathlib.Path) -> RunData:
    """Read a (finished or partial) run directory.

    Raises
    ------
    cafe_core.store.RunDirectoryError
        If ``directory`` holds no run store.
    """
    directory = pathlib.Path(directory)
    raw = stored_spec(directory)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        spec = RunSpec.model_validate(stored_spec_data(raw))
    with RunStore.open_existing(directory) as store:
        listed = store.listed_images()
        targets = [t for t in store.targets() if listed is None or t.key.image_id in listed]
        scores = {(s.key, s.attributor, s.metric): s for s in store.scores()
                  if listed is None or s.key.image_id in listed}
        higher = store.get_meta("higher_is_better") or {}
        seed = store.get_meta("seed")
        versions = store.get_meta("versions") or {}
        entries = store.image_entries()
        explained = {t.key for t in targets if t.explained}
        heatmap_info = [{"sae": h.key.sae, "attributor": h.attributor, **{f"info.{k}": v for k, v in h.info.items()}}
                        for h in store.heatmap_records(arrays=False) if h.key in explained]
    return RunData(directory, spec, raw, targets, scores, higher, int(seed if seed is not None else spec.run.seed),
                   versions, {image_id: entry.index for image_id, entry in entries.items()}, heatmap_info)


def stored_heatmaps(directory: pathlib.Path) -> dict[tuple[TargetKey, str], np.ndarray]:
    """Every heatmap of a run, by ``(target key, attributor)``."""
    with RunStore.open_existing(directory) as store:
        return {(h.key, h.attributor): h.heatmap for h in store.heatmap_records(arrays=True)}
