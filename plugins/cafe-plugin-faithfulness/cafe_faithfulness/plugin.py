"""Registration of the insertion and deletion metrics (imports nothing heavy; they load on first use)."""

from __future__ import annotations

from cafe_core import hookimpl

from .params import PatchCurveParams


@hookimpl
def cafe_register_metrics(register):
    """Register ``insertion`` and ``deletion``."""
    register(
        "insertion",
        "cafe_faithfulness.curves:Insertion",
        params=PatchCurveParams,
        description="Area under the latent as patches are inserted, most relevant first (higher is better)",
    )
    register(
        "deletion",
        "cafe_faithfulness.curves:Deletion",
        params=PatchCurveParams,
        description="Area under the latent as patches are deleted, most relevant first (lower is better)",
    )
