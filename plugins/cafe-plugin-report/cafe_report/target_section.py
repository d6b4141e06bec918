"""One target's section of a report page: its maps, its curves, its scores and where each map puts the cause."""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from typing import Any

import numpy as np

from cafe_core.records import TargetKey, TargetRecord

from . import markup
from .cache import FigureCache, digest
from .figures import MapPanel, curves_figure, target_strip
from .locality import LOCALITY_COLUMNS, cause_mask, fired_cells
from .run_data import RunData

__all__ = ["NO_ACTIVATION_MAP", "RenderedTarget", "TargetSections", "anchor_of", "legend"]

NO_ACTIVATION_MAP = (
    "{name} target: the latent has no patch of its own, so the activation map has nothing to show here; "
    "the iERF is its only localisation"
)

_ARROWS = {True: " ↑", False: " ↓"}


def anchor_of(key: TargetKey) -> str:
    """The HTML id of a target's section."""
    return "t-" + digest(list(key.as_tuple()))[:12]


def legend() -> str:
    """How to read the maps."""
    return (
        '<p class="note">Maps: the image as the model saw it, then each attributor\'s map over the greyed image. '
        "iERFs use a red-blue diverging scale centred on zero (red: the patch causes the latent; blue: it works "
        "against it), each scaled to its largest absolute value; the activation map uses the cividis scale from "
        "zero to its maximum. The fired token's patch is outlined with a dotted yellow line, the cause patches "
        "with a solid black line.</p>"
    )


@dataclass
class RenderedTarget:
    """A target's section (``html``), with its anchor, title and figures for reuse elsewhere."""

    html: str
    anchor: str
    title: str
    figures: str


class TargetSections:
    """Renders the sections of the targets of one run.

    Parameters
    ----------
    data : RunData
        The run.
    figures : FigureCache
        Where the figures go.
    activation_labels : list of str
        Labels of the run's ``activation_map`` attributors.
    cause_share : float
        Share of the positive relevance the cause patches hold, unless the run stored a ``cause_patches``
        metric (its ``share``, ``top_k`` and per-target counts are used then).
    """

    def __init__(self, data: RunData, figures: FigureCache, activation_labels: list[str], cause_share: float) -> None:
        self.data, self.figures, self.activation_labels = data, figures, activation_labels
        cause_labels = data.labels_named("cause_patches", "metrics")
        self.cause_metric = cause_labels[0] if cause_labels else None
        params = data.metric_params(self.cause_metric) if self.cause_metric else {}
        self.cause_share = float(params.get("share", cause_share))
        self.cause_top_k = params.get("top_k")
        self.scores_of: dict[TargetKey, dict[tuple[str, str], Any]] = {}
        for (key, attributor, metric), score in data.scores.items():
            self.scores_of.setdefault(key, {})[(attributor, metric)] = score

    def render(self, backbone: Any, record: TargetRecord, image: np.ndarray, heatmaps: dict,
               locality: dict) -> RenderedTarget:
        """The section of one target; ``heatmaps`` and ``locality`` are keyed by ``(target key, attributor)``."""
        key = record.key
        rows, cols, present = fired_cells(backbone, key.layer, [key.position])
        fired = (int(rows[0]), int(cols[0])) if present[0] else None
        panels = self._panels(record, heatmaps, fired)
        name = "-".join(str(part) for part in key.as_tuple())
        stem = "target-" + digest(name)[:8]
        strip = self.figures.get(
            stem, digest(image, [(p.title, p.kind, p.heatmap, p.cause, p.note) for p in panels], fired,
                         list(backbone.patch_size)),
            lambda path: target_strip(path, image, panels, tuple(backbone.patch_size), fired))
        shown = markup.figure(f"figures/{strip.name}", f"maps of {name}")
        curves = self._curves(key)
        if curves:
            plot = self.figures.get(stem + "-curves", digest(curves, self.data.higher_is_better),
                                    lambda path: curves_figure(path, curves, self.data.higher_is_better))
            shown += markup.figure(f"figures/{plot.name}", f"curves of {name}",
                                 "Each attributor's curve: the latent as patches are inserted or deleted in its "
                                 "order, over the latent on the full image.")
        title = (f"{markup.escape(key.image_id)} · {markup.escape(key.sae)} · layer {key.layer} · "
                 f"latent {key.latent} · {markup.escape(record.position_name)}")
        note = "" if fired is not None else (
            f'<p class="note">{markup.escape(_sentence(NO_ACTIVATION_MAP.format(name=record.position_name)))}</p>')
        anchor = anchor_of(key)
        section = (
            f'<div class="target" id="{anchor}"><h3>{title}</h3>'
            f'<p class="muted">activation {record.activation:.4g}; cause patches hold {self.cause_rule()} of '
            f"each map's positive relevance</p>{note}{shown}{self._scores_table(key)}"
            f"{self._locality_table(key, locality)}</div>"
        )
        return RenderedTarget(section, anchor, title, shown)

    def cause_rule(self) -> str:
        """What the outlined cause patches are, in words."""
        return f"the top {self.cause_top_k} patches" if self.cause_top_k else f"{self.cause_share:.0%}"

    def _panels(self, record: TargetRecord, heatmaps: dict, fired: tuple[int, int] | None) -> list[MapPanel]:
        panels = [MapPanel("image as the model saw it", kind="image")]
        for attributor in self.data.attributors:
            heatmap = heatmaps.get((record.key, attributor))
            if heatmap is None:
                continue
            is_activation = attributor in self.activation_labels
            if is_activation and fired is None:
                note = textwrap.fill(NO_ACTIVATION_MAP.format(name=record.position_name), 22)
                panels.append(MapPanel(attributor, kind="note", note=note))
                continue
            panels.append(MapPanel(attributor, heatmap, "activation" if is_activation else "relevance",
                                   self._cause(record.key, attributor, heatmap)))
        return panels

    def _cause(self, key: TargetKey, attributor: str, heatmap: np.ndarray) -> np.ndarray:
        count = None
        stored = self.scores_of.get(key, {}).get((attributor, self.cause_metric)) if self.cause_metric else None
        if stored is not None and "count" in stored.info:
            count = int(stored.info["count"])
        elif self.cause_top_k is not None:
            count = int(self.cause_top_k)
        return cause_mask(heatmap, self.cause_share, count)

    def _curves(self, key: TargetKey) -> dict[str, dict[str, tuple]]:
        curves: dict[str, dict[str, tuple]] = {}
        for (attributor, metric), score in self.scores_of.get(key, {}).items():
            if score.curve is None or score.fractions is None or metric == self.cause_metric:
                continue
            curves.setdefault(metric, {})[attributor] = (np.asarray(score.fractions), np.asarray(score.curve),
                                                         score.score)
        return curves

    def _scores_table(self, key: TargetKey) -> str:
        scores = self.scores_of.get(key, {})
        metrics = [m for m in self.data.metrics if any((a, m) in scores for a in self.data.attributors)]
        if not metrics:
            return ""
        rows = [[a, *(_number(scores[(a, m)].score) if (a, m) in scores else "–" for m in metrics)]
                for a in self.data.attributors]
        header = ["attributor", *(m + _ARROWS.get(self.data.higher_is_better.get(m), "") for m in metrics)]
        return '<p class="muted">Scores stored in the run:</p>' + markup.table(header, rows)

    def _locality_table(self, key: TargetKey, locality: dict) -> str:
        rows = [[a, *(_number(locality[(key, a)][c], integer=c == "cause_patches") for c in LOCALITY_COLUMNS)]
                for a in self.data.attributors if (key, a) in locality]
        if not rows:
            return ""
        return ('<p class="muted">Where each map puts the cause (computed from the stored maps):</p>'
                + markup.table(["attributor", *LOCALITY_COLUMNS.values()], rows))


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def _number(value: float, integer: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.0f}" if integer else f"{value:.3f}"
