"""Sections other plugins add to a report, registered with the ``cafe_register_report_sections`` hook.

A section is a callable taking a :class:`SectionContext` and returning a :class:`ReportSection`, or ``None``
when it has nothing to show for this run. The report calls every registered one, in name order, and puts
what they return on its index page after its own sections, each linked from the page's navigation bar.
"""

from __future__ import annotations

import pathlib
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any

from . import markup

__all__ = ["ReportSection", "SectionContext", "plugin_sections"]


@dataclass
class SectionContext:
    """What a plugin's section is given.

    Attributes
    ----------
    run_dir : pathlib.Path
        The run directory the report is of.
    out : pathlib.Path
        The report folder; a section writes its files under ``out / <its own folder>`` and refers to them by
        paths relative to ``out``.
    include : list of pathlib.Path
        Folders given with ``cafe report --include``: output of other commands kept outside the run directory.
    """

    run_dir: pathlib.Path
    out: pathlib.Path
    include: list[pathlib.Path] = field(default_factory=list)


@dataclass
class ReportSection:
    """A section of the report's index page: ``html`` under an ``<h2 id=anchor>title</h2>`` heading."""

    anchor: str
    title: str
    html: str

    def render(self) -> str:
        """The heading and the body."""
        return f'<h2 id="{markup.escape(self.anchor)}">{markup.escape(self.title)}</h2>\n{self.html}'


def plugin_sections(context: SectionContext, host: Any = None) -> list[ReportSection]:
    """Every registered section that has something to show for this run.

    A section that raises does not stop the report: it is shown as a note naming the plugin and the error.
    """
    from cafe_core.plugins import get_host

    sections = []
    for registration in (host or get_host()).registry("report_section"):
        try:
            section = registration.load()(context)
        except Exception as exc:  # noqa: BLE001 - another plugin's failure becomes a note in the report
            warnings.warn(f"report section {registration.name!r} of plugin {registration.plugin!r} failed: "
                          f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}", RuntimeWarning, stacklevel=2)
            section = ReportSection(
                f"section-{registration.name}", registration.name,
                f"<p>The section of plugin {markup.escape(registration.plugin)} failed: "
                f"{markup.escape(f'{type(exc).__name__}: {exc}')}.</p>")
        if section is not None:
            sections.append(section)
    return sections
