"""The records of a run: what the runner computes, an executor carries and the run store keeps.

Every result of a run is one of four small records, all keyed by a :class:`TargetKey`:

``TargetRecord``
    A target considered on an image: the latent's value there and whether it was explained.
``HeatmapRecord``
    One attributor's heatmap of one target.
``ScoreRecord``
    One metric's score (and curve) of one heatmap.
``UnitResult``
    What one piece of a unit of work produced: lists of the three above, and whether the unit is complete.

They hold plain Python and numpy values only (no tensors, no open files), so a unit's result can be pickled
to another process or machine and written there; the run store's tables are derived from their fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Iterable

import numpy as np

__all__ = [
    "HeatmapRecord",
    "KEY_FIELDS",
    "ScoreRecord",
    "Target",
    "TargetKey",
    "TargetRecord",
    "UnitResult",
    "WorkUnit",
]


@dataclass(frozen=True, order=True)
class Target:
    """One thing to explain: latent ``latent`` of the SAE at ``layer``, read at token ``position``."""

    layer: int
    latent: int
    position: int


@dataclass(frozen=True, order=True)
class TargetKey:
    """One target of one SAE on one image: the key of every record of a run.

    ``sae`` is the label of the SAE's ``[[sae]]`` section (its ``label``, else its ``name``), so that two SAEs
    at the same layer (a trained SAE and its random control, two dictionary sizes) never share a key.
    """

    image_id: str
    sae: str
    layer: int
    latent: int
    position: int

    @classmethod
    def of(cls, image_id: str, sae: str, target: Target) -> "TargetKey":
        """The key of ``target`` of SAE ``sae`` on image ``image_id``."""
        return cls(image_id, sae, target.layer, target.latent, target.position)

    @property
    def target(self) -> Target:
        """The target without its image."""
        return Target(self.layer, self.latent, self.position)

    def as_tuple(self) -> tuple[Any, ...]:
        """The fields in declaration order (the store's key columns)."""
        return tuple(getattr(self, name) for name in KEY_FIELDS)


KEY_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(TargetKey))


@dataclass(frozen=True)
class TargetRecord:
    """A target considered on an image.

    Attributes
    ----------
    key : TargetKey
    position_name : str
        ``"cls"``, ``"reg0"``... or ``"patch(r,c)"``.
    activation : float
        The latent's value at its token on this image.
    status : {"explained", "inactive", "below_floor"}
        Inactive targets (value at most the rule's ``min_activation``) and targets below the rule's floor
        (active, but under ``min_relative_activation`` times the latent's scale) are recorded but not
        explained.
    """

    key: TargetKey
    position_name: str
    activation: float
    status: str

    @property
    def explained(self) -> bool:
        """Whether heatmaps and scores are computed for this target."""
        return self.status == "explained"


@dataclass(frozen=True)
class HeatmapRecord:
    """One attributor's heatmap ``[gh, gw]`` of one target, with the attributor's per-row diagnostics."""

    key: TargetKey
    attributor: str
    heatmap: np.ndarray
    info: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ScoreRecord:
    """One metric's score of one attributor's heatmap of one target.

    Attributes
    ----------
    score : float
        The number the metric reduces the heatmap to (NaN where undefined).
    curve, raw_curve, fractions : numpy.ndarray or None
        The curve as scored, before clipping, and its x-axis, for metrics that draw one.
    info : dict
        Further per-row values of the metric.
    """

    key: TargetKey
    attributor: str
    metric: str
    score: float
    curve: np.ndarray | None = None
    raw_curve: np.ndarray | None = None
    fractions: np.ndarray | None = None
    info: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkUnit:
    """A batch of dataset indices; ``key`` names it in the run store, ``image_ids`` are its images' ids."""

    key: str
    indices: tuple[int, ...]
    image_ids: tuple[str, ...] = ()


@dataclass
class UnitResult:
    """What (a piece of) one unit of work produced, written to the run store in one transaction.

    A worker may hand back a unit's results in several pieces (each chunk of targets as it is done), so that a
    run that dies loses only the piece in flight; the last piece has ``complete = True``, which marks the
    unit finished in the same transaction.
    """

    unit: str
    targets: list[TargetRecord] = field(default_factory=list)
    heatmaps: list[HeatmapRecord] = field(default_factory=list)
    scores: list[ScoreRecord] = field(default_factory=list)
    complete: bool = False

    @classmethod
    def merge(cls, pieces: Iterable["UnitResult"]) -> "UnitResult":
        """One result holding every piece's records (complete when any piece is)."""
        pieces = list(pieces)
        if not pieces:
            raise ValueError("nothing to merge")
        units = {piece.unit for piece in pieces}
        if len(units) != 1:
            raise ValueError(f"pieces of different units cannot be merged: {sorted(units)}")
        return cls(
            unit=pieces[0].unit,
            targets=[r for p in pieces for r in p.targets],
            heatmaps=[r for p in pieces for r in p.heatmaps],
            scores=[r for p in pieces for r in p.scores],
            complete=any(p.complete for p in pieces),
        )
