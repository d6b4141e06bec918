"""The sections of a report's index page: summary, paired differences, locality, sanity checks."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import markup
from .locality import LOCALITY_COLUMNS
from .run_data import RunData
from .stats import Estimate, wilson_interval
from .summary import Summary, group_of

__all__ = ["diagnostics_section", "locality_section", "read_offs", "sanity_section", "summary_section"]

_DIAGNOSTIC_NOTES = {
    "completeness |delta|/|f(x)-f(x0)|": (
        "how far the heatmap's sum is from the change of the integrated quantity between the blank and the "
        "image (Integrated Gradients' completeness): large values mean too few steps"
    ),
    "conservation |error|/|z|": (
        "the relevance that neither the heatmap nor the biases and embeddings hold, relative to z: under "
        "AttnLRP, what the softmaxes do not pass on (see cafe-plugin-attnlrp's README); zero for CP-LRP"
    ),
}

NONLOCAL_THRESHOLD = 0.5
"""A heatmap whose fired patch holds less than this share of the positive relevance is non-local."""

_ARROWS = {True: " ↑", False: " ↓"}


def summary_section(summary: Summary, figure_name: str | None) -> str:
    """What the run shows against the reference, the summary plot, then the tables of every estimate."""
    if not summary.rows:
        return '<h2 id="summary">Summary</h2><p>No scores yet.</p><h2 id="differences"></h2>'
    method = (f"{summary.level:.0%} intervals: percentile bootstrap over targets, {summary.resamples} resamples, "
              f"seed {summary.seed}.")
    parts = ['<h2 id="summary">Summary over targets</h2>']
    if summary.reference is not None:
        offs = read_offs(summary)
        if offs:
            parts.append(f"<p>Against <b>{markup.escape(summary.reference)}</b>, target by target:</p>")
            parts.append("<ul>" + "".join(f"<li>{line}</li>" for line in offs) + "</ul>")
    if figure_name:
        parts.append(markup.figure(f"figures/{figure_name}", "summary plot",
                                 "Means with their intervals, and the paired differences against the reference."))
    parts.append(f'<p class="muted">{markup.escape(method)} Each cell: estimate [interval].</p>')
    for statistic in ("mean", "median"):
        parts.append(f"<h3>{statistic.capitalize()} per target</h3>")
        parts.append(_wide_table(summary, lambda r, s=statistic: getattr(r, s).format(), with_n=True))
    parts.append('<h2 id="differences">Against the reference</h2>')
    if summary.reference is None:
        parts.append("<p>The run has no reference attributor to compare with (pass --reference).</p>")
    else:
        parts.append(
            f"<p>Each attributor minus <b>{markup.escape(summary.reference)}</b>, target by target (paired: the same "
            "targets): the mean difference with its bootstrap interval, and on how many targets the attributor "
            "does better.</p>"
        )
        parts.append(_wide_table(
            summary,
            lambda r: "–" if r.difference is None else
            r.difference.format() + ("" if r.wins is None else f"; better on {r.wins:.0%}"),
            skip_reference=True,
        ))
    return "\n".join(parts)


def _wide_table(summary: Summary, cell, *, with_n: bool = False, skip_reference: bool = False) -> str:
    """One row per group and attributor, one column per metric."""
    keys = sorted({(r.group, r.attributor) for r in summary.rows
                   if not (skip_reference and r.attributor == summary.reference)})
    by_key = {(r.group, r.attributor, r.metric): r for r in summary.rows}
    header = ["group", "attributor"] + (["n"] if with_n else []) + [
        m + _ARROWS.get(summary.higher_is_better.get(m), "") for m in summary.metrics]
    rows = []
    for group, attributor in keys:
        found = [by_key.get((group, attributor, m)) for m in summary.metrics]
        n = max((r.mean.n for r in found if r is not None), default=0)
        cells = [cell(r) if r is not None else "–" for r in found]
        rows.append([group, attributor] + ([n] if with_n else []) + cells)
    return markup.table(header, rows, text_columns=2)


def read_offs(summary: Summary) -> list[str]:
    """One sentence per metric with a direction, group and attributor: better, worse, or not told apart."""
    lines = []
    for row in summary.rows:
        higher = summary.higher_is_better.get(row.metric)
        d = row.difference
        if higher is None or d is None or not d.n:
            continue
        better_low, better_high = (d.low > 0, d.high < 0) if higher else (d.high < 0, d.low > 0)
        verdict = ("beats" if better_low else "does worse than" if better_high
                   else "cannot be told apart from")
        lines.append(
            f"<b>{markup.escape(row.attributor)}</b> {verdict} {markup.escape(summary.reference or '')} on "
            f"{markup.escape(row.metric)} ({markup.escape(row.group)}): mean difference {d.value:+.3f} "
            f"[{d.low:+.3f}, {d.high:+.3f}] over {d.n} targets"
        )
    return lines


def locality_section(data: RunData, locality: dict, share: float, top_k: int | None) -> str:
    """Per group and attributor: the non-local share with its Wilson interval and the medians of every measure."""
    head = '<h2 id="locality">Locality of the explanations</h2>'
    if not locality:
        return head + "<p>No heatmaps yet.</p>"
    cause = f"the top {top_k}" if top_k else f"{share:.0%} of the positive relevance"
    intro = (
        f"<p>Computed from every stored map. A map is <b>non-local</b> when the fired token's own patch holds less "
        f"than {NONLOCAL_THRESHOLD:.0%} of its positive relevance. Cause patches: the fewest most relevant patches "
        f"holding {markup.escape(cause)}. Mass outside: the positive relevance outside the 3x3 patches around the "
        "fired one. Distance: patches from the fired patch to the relevance's centre of mass. Class-token (and "
        "register) targets have no patch of their own: only their cause patches and the rank correlation are "
        "defined.</p>"
    )
    groups = {t.key: group_of(t) for t in data.explained}
    rows = []
    for group in sorted(set(groups.values())):
        for attributor in data.attributors:
            measured = [locality[(k, attributor)] for k, g in groups.items()
                        if g == group and (k, attributor) in locality]
            if not measured:
                continue
            own = np.array([m["own_patch_share"] for m in measured])
            own = own[np.isfinite(own)]
            k = int((own < NONLOCAL_THRESHOLD).sum())
            low, high = wilson_interval(k, len(own))
            share_cell = f"{k / len(own):.0%} [{low:.0%}, {high:.0%}]" if len(own) else "–"
            medians = [_median([m[c] for m in measured], digits=1 if c == "cause_patches" else 3)
                       for c in LOCALITY_COLUMNS]
            rows.append([group, attributor, len(measured), share_cell, *medians])
    header = ["group", "attributor", "maps", "non-local [95% interval]",
              *(f"median {name}" for name in LOCALITY_COLUMNS.values())]
    return head + intro + markup.table(header, rows, text_columns=2)


def _median(values: list[float], digits: int = 3) -> str:
    finite = [v for v in values if math.isfinite(v)]
    return f"{float(np.median(finite)):.{digits}f}" if finite else "–"


def sanity_section(sanity: dict[str, Any] | None, requested: int) -> str:
    """Model randomisation, the random-direction control and the symmetric relevance gain."""
    head = '<h2 id="sanity">Sanity checks</h2>'
    if sanity is None:
        reason = "not computed (--sanity-targets 0)" if requested <= 0 else "not computed: no explained targets yet"
        return head + f"<p>{reason}.</p>"
    parts = [head, f"<p>On the first {sanity['targets']} explained targets, recomputed with the run's components "
                   f"(seed {sanity['seed']}); insertion curves in at most {sanity.get('curve_steps', 16)} steps, "
                   "with the run's blank.</p>"]
    parts.append(
        "<h3>Model randomisation</h3><p>Each target is explained again with the SAE replaced by a random one "
        "(the <code>random</code> SAE of the same size) and, separately, with the backbone's weights redrawn "
        "(each tensor from a normal distribution with its own mean and standard deviation). The same latent "
        "is explained at the same token, through its pre-activation (the value before the SAE's ReLU, which "
        "stays defined when randomisation silences the latent). A method that explains the model gives maps "
        "unlike its trained ones (rank correlation near 0); one that ignores the model keeps them (near 1). "
        "Rank correlations: median over targets; insertion change: mean of randomised minus trained.</p>"
    )
    rows = []
    for attributor, checks in sanity["randomisation"].items():
        rows.append([attributor, *(_estimate(checks[w]["rank_correlation"]) for w in ("sae", "backbone")),
                     *(_estimate(checks[w]["insertion_change"]) for w in ("sae", "backbone"))])
    parts.append(markup.table(["attributor", "rank corr., random SAE", "rank corr., random backbone",
                             "insertion change, random SAE", "insertion change, random backbone"], rows))
    parts.append(
        f"<h3>Random-direction control</h3><p>Insertion area of each target's latent against that of "
        f"{sanity['directions']} random latents read at the same token of the same layer: each a random unit "
        "encoder row applied to the token as the SAE prepares it (after its input normalisation and decoder "
        "bias, where the SAE has them), through a ReLU, with its sign and bias set so that it is silent on the "
        "insertion's blank image and active on the image, as a sparse latent is. A latent's explanation should "
        "recover it better than the explanation of a random direction recovers that direction.</p>"
    )
    rows = [[a, _estimate(c["latent"]), _estimate(c["random"]), _estimate(c["difference"]),
             "–" if c["wins"] is None else f"{c['wins']:.0%}"] for a, c in sanity["random_directions"].items()]
    parts.append(markup.table(["attributor", "latent insertion", "random-direction insertion",
                             "difference [interval]", "latent better on"], rows))
    parts.append(
        "<h3>Symmetric relevance gain</h3><p>Insertion most-relevant-first minus least-relevant-first "
        "(<code>symmetric_relevance_gain</code>): near 1 when the map orders the patches the model uses first "
        "and those it ignores last, near 0 for an order unrelated to the model.</p>"
    )
    rows = [[a, _estimate(e)] for a, e in sanity["relevance_gain"].items()]
    parts.append(markup.table(["attributor", "mean [interval]"], rows))
    return "\n".join(parts)


def _estimate(record: dict | None) -> str:
    if not record or not record.get("n"):
        return "–"
    return Estimate(record["n"], *(_nan(record[k]) for k in ("value", "low", "high"))).format()


def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)


def diagnostics_section(rows: list[dict[str, Any]]) -> str:
    """The per-heatmap relative errors attributors report (``cafe_core.results.heatmap_diagnostics`` rows).

    Empty when no attributor of the run reports one.
    """
    if not rows:
        return ""
    several = len({row["sae"] for row in rows}) > 1
    header = ["relative error", *(["sae"] if several else []), "attributor", "heatmaps", "median", "max"]
    table_rows = [
        [row["diagnostic"], *([row["sae"]] if several else []), row["attributor"], row["n"],
         f"{row['median']:.4g}", f"{row['max']:.4g}"]
        for row in rows
    ]
    notes = "".join(
        f"<li><b>{markup.escape(name)}</b>: {markup.escape(note)}.</li>"
        for name, note in _DIAGNOSTIC_NOTES.items() if any(row["diagnostic"] == name for row in rows)
    )
    return (
        '<h3 id="diagnostics">What the attributors report about their own heatmaps</h3>'
        + markup.table(header, table_rows, text_columns=3 if several else 2)
        + f"<ul>{notes}</ul>"
    )
