"""``write_report(run_dir)``: a run directory as HTML pages with PNG figures, written next to its run store."""

from __future__ import annotations

import json
import pathlib
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from cafe_core.records import TargetKey, TargetRecord
from cafe_core.results import heatmap_diagnostics

from . import markup
from .cache import FigureCache, code_version, digest
from .extension import ReportSection, SectionContext, plugin_sections
from .figures import summary_figure
from .jsonable import finite
from .locality import fired_cells, measure_locality
from .rebuild import display_images, find_items, prepare_spec
from .run_data import RunData, read_run, stored_heatmaps
from .sections import diagnostics_section, locality_section, sanity_section, summary_section
from .summary import Summary, as_records, group_of, summarise
from .target_section import TargetSections, anchor_of, legend

__all__ = ["ReportOptions", "write_report"]


@dataclass
class ReportOptions:
    """How a report is made.

    Attributes
    ----------
    out : pathlib.Path, optional
        The report folder (default ``<run dir>/report``).
    base_dir : pathlib.Path, optional
        The folder relative paths in the run's spec are taken from (default: the working directory).
    device : str
        Where the model is rebuilt (``"cpu"``, ``"cuda"``, ``"auto"``).
    max_targets : int
        At most this many targets get figures: the first explained ones in store order (image id, layer,
        latent, token); the summary covers all of them.
    per_page : int
        Targets per page.
    reference : str
        The attributor every other one is compared with, target by target.
    seed : int, optional
        Seed of the bootstrap intervals and the sanity checks' draws (default: the run's seed).
    resamples : int
        Bootstrap resamples.
    cause_share : float
        Share of the positive relevance the outlined cause patches hold, unless the run stored its own
        ``cause_patches`` metric (its params are used then).
    sanity_targets : int
        Targets the sanity checks recompute (0: no sanity checks).
    random_directions : int
        Random directions per target in the random-direction control.
    progress : bool, optional
        Show a progress bar (default: when stderr is a terminal).
    host : PluginHost, optional
        The plugins the run's spec is rebuilt with, and whose registered report sections are added (default:
        every installed plugin).
    include : list of pathlib.Path
        Folders of other commands' output kept outside the run directory, handed to the plugins' sections
        (``cafe graph --out DIR``: its concept graphs are drawn in the report).
    """

    out: pathlib.Path | None = None
    base_dir: pathlib.Path | None = None
    device: str = "cpu"
    max_targets: int = 100
    per_page: int = 20
    reference: str = "activation_map"
    seed: int | None = None
    resamples: int = 2000
    cause_share: float = 0.5
    sanity_targets: int = 8
    random_directions: int = 3
    progress: bool | None = None
    host: Any = None
    include: list[pathlib.Path] = field(default_factory=list)


def write_report(run_dir: str | pathlib.Path, options: ReportOptions | None = None, **overrides: Any) -> pathlib.Path:
    """Write the HTML report of a (finished or partial) run directory.

    Parameters
    ----------
    run_dir : path
        A run directory (``cafe run SPEC --out DIR``).
    options : ReportOptions, optional
        Settings; keyword arguments override single fields.

    Returns
    -------
    pathlib.Path
        The report's ``index.html``. Beside it: ``targets-NNN.html`` pages, ``figures/*.png`` and
        ``summary.json``. Writing again (after a run was resumed or extended) updates every page and redraws
        only the figures whose content changed.
    """
    options = options or ReportOptions()
    for name, value in overrides.items():
        if not hasattr(options, name):
            raise TypeError(f"write_report got an unknown option {name!r}")
        setattr(options, name, value)
    data = read_run(run_dir)
    out = pathlib.Path(options.out) if options.out is not None else data.directory / "report"
    seed = data.seed if options.seed is None else options.seed
    summary = summarise(data.targets, data.scores.values(), data.higher_is_better,
                        reference=options.reference, seed=seed, resamples=options.resamples)
    figures = FigureCache(out / "figures")
    shown = data.explained[: options.max_targets]
    builder = _ReportBuilder(data, options, summary, figures, out, seed)
    builder.write(shown)
    figures.remove_unused()
    return out / "index.html"


class _ReportBuilder:
    """Writes the pages of one report."""

    def __init__(self, data: RunData, options: ReportOptions, summary: Summary, figures: FigureCache,
                 out: pathlib.Path, seed: int) -> None:
        self.data, self.options, self.summary, self.figures, self.out, self.seed = (
            data, options, summary, figures, out, seed)
        self.activation_labels = data.labels_named("activation_map")
        self.sections = TargetSections(data, figures, self.activation_labels, options.cause_share)
        self.cause_share, self.cause_top_k = self.sections.cause_share, self.sections.cause_top_k
        self.first_look: str | None = None
        self.extra: list[ReportSection] = []

    # -- the whole report -------------------------------------------------------------------------------

    def write(self, shown: list[TargetRecord]) -> None:
        data = self.data
        plan = prepare_spec(data.raw_spec, self.options.base_dir, self.options.device,
                            self.options.host) if data.explained else None
        heatmaps = stored_heatmaps(data.directory)
        self.extra = plugin_sections(SectionContext(data.directory, self.out, [pathlib.Path(p) for p in
                                                                              self.options.include]),
                                     self.options.host)
        locality = self._locality(plan, heatmaps) if plan is not None else {}
        sanity = self._sanity(plan, heatmaps) if plan is not None and self.options.sanity_targets > 0 else None
        pages = self._target_pages(plan, shown, heatmaps, locality)
        self._index(pages, shown, locality, sanity)
        (self.out / "summary.json").write_text(json.dumps(finite(
            {"summary": as_records(self.summary), "reference": self.summary.reference, "seed": self.seed,
             "resamples": self.summary.resamples, "level": self.summary.level,
             "targets": len(data.targets), "explained": len(data.explained), "shown": len(shown),
             "below_floor": sum(t.status == "below_floor" for t in data.targets),
             "diagnostics": heatmap_diagnostics(data.heatmap_info),
             "sanity": sanity}), indent=1, allow_nan=False) + "\n")

    # -- locality of every stored heatmap ------------------------------------------------------------------

    def _locality(self, plan: Any, heatmaps: dict) -> dict[tuple[TargetKey, str], dict[str, float]]:
        """The locality measures of every stored heatmap, by ``(target key, attributor)``."""
        out: dict[tuple[TargetKey, str], dict[str, float]] = {}
        explained = self.data.explained
        by_layer: dict[int, list[TargetRecord]] = {}
        for record in explained:
            by_layer.setdefault(record.key.layer, []).append(record)
        for layer, records in by_layer.items():
            rows, cols, present = fired_cells(plan.backbone, layer, [r.key.position for r in records])
            activation = None
            if self.activation_labels:
                maps = [heatmaps.get((r.key, self.activation_labels[0])) for r in records]
                if all(m is not None for m in maps):
                    activation = np.stack(maps)
            for attributor in self.data.attributors:
                maps = [heatmaps.get((r.key, attributor)) for r in records]
                index = [i for i, m in enumerate(maps) if m is not None]
                if not index:
                    continue
                measured = measure_locality(
                    np.stack([maps[i] for i in index]), rows[index], cols[index], present[index],
                    activation[index] if activation is not None else None, share=self.cause_share,
                )
                for j, i in enumerate(index):
                    out[(records[i].key, attributor)] = measured.row(j)
        return out

    # -- sanity checks --------------------------------------------------------------------------------------

    def _sanity(self, plan: Any, heatmaps: dict) -> dict[str, Any] | None:
        from .sanity import sanity_checks

        sample = self.data.explained[: self.options.sanity_targets]
        if not sample:
            return None
        cache = self.out / "sanity.json"
        key = digest(self.data.raw_spec, [list(r.key.as_tuple()) for r in sample], self.seed,
                     self.options.random_directions, code_version("sanity.py", "randomise.py").hex())
        if cache.is_file():
            cached = json.loads(cache.read_text())
            if cached.get("key") == key:
                return cached["result"]
        result = sanity_checks(plan, sample, heatmaps, seed=self.seed,
                               directions=max(1, self.options.random_directions), host=self.options.host,
                               image_index=self.data.image_index)
        self.out.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"key": key, "result": finite(result)}, allow_nan=False) + "\n")
        return result

    # -- target pages -----------------------------------------------------------------------------------------

    def _target_pages(self, plan: Any, shown: list[TargetRecord], heatmaps: dict, locality: dict) -> list[str]:
        per_page = max(1, self.options.per_page)
        chunks = [shown[i : i + per_page] for i in range(0, len(shown), per_page)]
        names = [f"targets-{i + 1:03d}.html" for i in range(len(chunks))]
        for stale in self.out.glob("targets-*.html"):
            if stale.name not in names:
                stale.unlink()
        images = self._images(plan, shown)
        show = sys.stderr.isatty() if self.options.progress is None else self.options.progress
        with tqdm(total=len(shown), desc="cafe report", unit="target", disable=not show) as bar:
            for p, chunk in enumerate(chunks):
                sections = []
                for record in chunk:
                    rendered = self.sections.render(plan.backbone, record, images[record.key.image_id], heatmaps,
                                                    locality)
                    sections.append(rendered.html)
                    if self.first_look is None:
                        self.first_look = (
                            f'<h2 id="first">A first target</h2><p><a href="{names[p]}#{rendered.anchor}">'
                            f"{rendered.title}</a> (all targets: below)</p>" + rendered.figures)
                    bar.update(1)
                body = (f"<h1>Targets {p * per_page + 1}–{p * per_page + len(chunk)} of {len(shown)}</h1>"
                        + legend() + markup.pager(names, p) + "\n".join(sections) + markup.pager(names, p))
                markup.write_page(self.out / names[p], markup.page(f"cafe report: targets (page {p + 1})", body,
                                                               nav=_nav(self.extra)))
        return names

    def _images(self, plan: Any, shown: list[TargetRecord]) -> dict[str, np.ndarray]:
        if not shown:
            return {}
        ids = sorted({r.key.image_id for r in shown})
        items = find_items(plan.dataset, ids, limit=self.data.spec.run.limit, known=self.data.image_index)
        pixels = {}
        for start in range(0, len(ids), plan.context.batch_size):
            batch = ids[start : start + plan.context.batch_size]
            x = plan.backbone.preprocess([items[i].image for i in batch])
            for image_id, image in zip(batch, display_images(plan.backbone, x)):
                pixels[image_id] = image
        return pixels

    # -- the index page -----------------------------------------------------------------------------------------

    def _index(self, pages: list[str], shown: list[TargetRecord], locality: dict, sanity: dict | None) -> None:
        data = self.data
        summary_png = None
        if self.summary.rows:
            metrics = [m for m in ("insertion", "deletion") if m in self.summary.metrics] or self.summary.metrics[:2]
            summary_png = self.figures.get(
                "summary", digest(as_records(self.summary), metrics),
                lambda path: summary_figure(path, self.summary, metrics))
        parts = [
            f"<h1>cafe report: {markup.escape(data.directory.name)}</h1>",
            self._overview(len(shown)),
            legend() + (self.first_look or ""),
            summary_section(self.summary, summary_png.name if summary_png else None),
            diagnostics_section(heatmap_diagnostics(data.heatmap_info)),
            locality_section(data, locality, self.cause_share, self.cause_top_k),
            sanity_section(sanity, self.options.sanity_targets),
            *(section.render() for section in self.extra),
            self._targets_section(pages, shown),
        ]
        markup.write_page(self.out / "index.html", markup.page(f"cafe report: {data.directory.name}", "\n".join(parts),
                                                          nav=_nav(self.extra)))

    def _overview(self, n_shown: int) -> str:
        data, spec = self.data, self.data.spec
        saes = ", ".join(f"{s.name} {s.params}" if s.params else s.name for s in spec.sae)
        inactive = sum(t.status == "inactive" for t in data.targets)
        below = sum(t.status == "below_floor" for t in data.targets)
        cap = "" if n_shown == len(data.explained) else (
            f" Figures are drawn for the first {n_shown} explained targets in store order (image id, layer, "
            f"latent, token): the cap is --max-targets {self.options.max_targets}; the summary covers all of them.")
        rows = [
            ["backbone", f"{spec.backbone.name} {spec.backbone.params or ''}".strip()],
            ["SAEs", saes],
            ["dataset", f"{spec.dataset.name} {spec.dataset.params or ''}".strip()],
            ["targets", "; ".join(_rule(r) for r in spec.targets)],
            ["attributors", ", ".join(data.attributors)],
            ["metrics", ", ".join(data.metrics) or "none"],
            ["seed", str(data.seed)],
            ["cafe-core", str(data.versions.get("cafe-core", "?"))],
        ]
        return (
            markup.table(["", "run"], rows, text_columns=2)
            + f"<p>{len(data.targets)} targets considered, {len(data.explained)} explained, {inactive} inactive"
            + (f", {below} below the floor (min_relative_activation)." if below else ".")
            + f"{markup.escape(cap)}</p>"
        )

    def _targets_section(self, pages: list[str], shown: list[TargetRecord]) -> str:
        if not shown:
            return '<h2 id="targets">Targets</h2><p>No explained targets yet.</p>'
        per_page = max(1, self.options.per_page)
        rows = []
        for i, record in enumerate(shown):
            key = record.key
            link = f"{pages[i // per_page]}#{anchor_of(key)}"
            rows.append(f'<tr><td class="text"><a href="{markup.escape(link)}">{markup.escape(key.image_id)}</a></td>'
                        f'<td class="text">{markup.escape(group_of(record))}</td><td>{key.latent}</td>'
                        f'<td class="text">{markup.escape(record.position_name)}</td>'
                        f"<td>{record.activation:.4g}</td></tr>")
        links = " ".join(f'<a href="{markup.escape(n)}">{i + 1}</a>' for i, n in enumerate(pages))
        return (
            f'<h2 id="targets">Targets</h2><p>Pages of {per_page} targets: {links}</p>'
            '<table><tr><th class="text">image</th><th class="text">group</th><th>latent</th>'
            '<th class="text">token</th><th>activation</th></tr>' + "\n".join(rows) + "</table>"
        )


def _rule(rule: Any) -> str:
    what = f"latents {rule.latents}" if rule.latents is not None else f"{rule.select} {rule.count}"
    return f"{what} at {rule.token}"


def _nav(extra: list[ReportSection]) -> str:
    added = "".join(f'<a href="index.html#{markup.escape(s.anchor)}">{markup.escape(s.title)}</a>' for s in extra)
    return ('<nav><a href="index.html#summary">Summary</a><a href="index.html#differences">Against the reference</a>'
            '<a href="index.html#locality">Locality</a><a href="index.html#sanity">Sanity checks</a>'
            f'{added}<a href="index.html#targets">Targets</a></nav>')
