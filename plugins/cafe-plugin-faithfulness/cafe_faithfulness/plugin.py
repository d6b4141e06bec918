"""Registration of the faithfulness metrics (imports nothing heavy; they load on first use)."""

from __future__ import annotations

from cafe_core import hookimpl

from .params import PatchCurveParams


@hookimpl
def cafe_register_metrics(register):
    """Register ``insertion``, ``deletion`` and ``own_patch_share``."""
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
    register(
        "own_patch_share",
        "cafe_faithfulness.locality:OwnPatchShare",
        description="Share of positive relevance on the fired token's own patch (below 0.5: non-local)",
    )
