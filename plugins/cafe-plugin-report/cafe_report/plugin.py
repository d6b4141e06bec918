"""Registration of the report commands (imports nothing heavy; each loads when invoked)."""

from __future__ import annotations

from cafe_core import hookimpl


@hookimpl
def cafe_register_commands(register):
    """Register ``report``, ``features`` and ``analyze``."""
    register(
        "report",
        "cafe_report.commands:ReportCommand",
        description="Write a run directory's HTML report with figures (DIR/report/index.html)",
    )
    register(
        "features",
        "cafe_report.commands:FeaturesCommand",
        description="Feature pages: top activating and most relevant images of latents, with cause patches",
    )
    register(
        "analyze",
        "cafe_report.commands:AnalyzeCommand",
        description="Analyses of a spec's model: `cafe analyze nonlocal SPEC` counts non-local latents per layer",
    )
