"""Registration of the interlayer commands (imports nothing heavy; each loads when invoked)."""

from __future__ import annotations

from cafe_core import hookimpl


@hookimpl
def cafe_register_commands(register):
    """Register ``graph`` and ``interlayer``."""
    register(
        "graph",
        "cafe_interlayer.commands:GraphCommand",
        description="Concept graphs: a top-layer latent explained by the latents of each earlier SAE, pruned to a share",
    )
    register(
        "interlayer",
        "cafe_interlayer.commands:InterlayerCommand",
        description="Interlayer attribution: `faithfulness` (insertion/deletion of source latents), `objects` (ground truth)",
    )


@hookimpl
def cafe_register_spec_tables(register):
    """Register the ``[interlayer]`` table of a run spec."""
    register(
        "interlayer",
        "cafe_interlayer.table:InterlayerSection",
        description="Settings of `cafe graph` and `cafe interlayer` (target and source SAEs, attributors, pruning)",
    )


@hookimpl
def cafe_register_report_sections(register):
    """Register the concept graphs' section of ``cafe report``."""
    register(
        "concept_graphs",
        "cafe_interlayer.report_section:concept_graph_section",
        description="The concept graphs `cafe graph` wrote into the run directory (or --include DIR)",
    )
