"""Sections other plugins add to a report: called with the run's context, in name order, failures shown as notes."""

from __future__ import annotations

import types

import pytest

from cafe_core import hookimpl
from cafe_core.plugins import PluginHost
from cafe_report.extension import ReportSection, SectionContext, plugin_sections


def _host(**sections):
    plugin = types.ModuleType("sections_plugin")

    @hookimpl
    def cafe_register_report_sections(register):
        for name, section in sections.items():
            register(name, section)

    plugin.cafe_register_report_sections = cafe_register_report_sections
    host = PluginHost(entry_points=False)
    host.add(plugin, "sections")
    return host


def _runs(context):
    return ReportSection("runs", "Runs", f"<p>{context.run_dir.name} {len(context.include)}</p>")


def _nothing(context):
    return None


def _broken(context):
    raise RuntimeError("no graphs.json")


def test_sections_get_the_context_and_those_with_nothing_to_show_are_left_out(tmp_path):
    context = SectionContext(tmp_path / "run", tmp_path / "run" / "report", [tmp_path / "a", tmp_path / "b"])
    sections = plugin_sections(context, _host(b_runs=_runs, a_nothing=_nothing))
    assert sections == [ReportSection("runs", "Runs", "<p>run 2</p>")]
    assert sections[0].render() == '<h2 id="runs">Runs</h2>\n<p>run 2</p>'


def test_a_failing_section_becomes_a_note_and_a_warning(tmp_path):
    with pytest.warns(RuntimeWarning, match="report section 'broken' of plugin 'sections' failed"):
        sections = plugin_sections(SectionContext(tmp_path, tmp_path / "report"), _host(broken=_broken, runs=_runs))
    assert [s.anchor for s in sections] == ["section-broken", "runs"]
    assert "RuntimeError: no graphs.json" in sections[0].html
