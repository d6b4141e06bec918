"""Registration of the faithfulness metrics (imports nothing heavy; they load on first use)."""

from __future__ import annotations

from cafe_core import hookimpl

from .locality_params import CausePatchesParams, NonlocalMassParams
from .params import PatchCurveParams


@hookimpl
def cafe_register_metrics(register):
    """Register ``insertion``, ``deletion``, ``own_patch_share`` and the cause-patch and non-locality metrics."""
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
    register(
        "cause_patches",
        "cafe_faithfulness.cause:CausePatches",
        params=CausePatchesParams,
        description="Fewest most relevant patches holding a share (default half) of the positive relevance",
    )
    register(
        "nonlocal_mass",
        "cafe_faithfulness.nonlocality:NonlocalMass",
        params=NonlocalMassParams,
        description="Share of positive relevance outside the fired patch's neighbourhood (radius 1: 3x3)",
    )
    register(
        "relevance_distance",
        "cafe_faithfulness.nonlocality:RelevanceDistance",
        description="Distance in patches from the fired patch to the relevance's centre of mass",
    )
    register(
        "activation_agreement",
        "cafe_faithfulness.nonlocality:ActivationAgreement",
        description="Spearman rank correlation between the activation map and the heatmap",
    )
    register(
        "symmetric_relevance_gain",
        "cafe_faithfulness.relevance_gain:SymmetricRelevanceGain",
        params=PatchCurveParams,
        aliases=("srg",),
        description="Insertion most-relevant-first minus least-relevant-first (higher is better)",
    )
