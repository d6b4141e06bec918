"""The quickstart's study as a spec dict, on the default model or over vit_base, for the GPU benchmarks."""

from __future__ import annotations

import pathlib

from cafe_core.spec import read_spec_source

QUICKSTART = pathlib.Path(__file__).resolve().parents[1] / "examples" / "quickstart.toml"


def quickstart_study(vit_base: bool, device: str, autocast: str | None = None, limit: int | None = None) -> dict:
    """The quickstart's targets, attributors and metrics at batch 64 on ``device``.

    ``vit_base``: over timm ``vit_base_patch16_224`` (random weights) with a random 6,144-latent SAE at block 6,
    on 224x224 shapes, instead of the default model.
    """
    spec = read_spec_source(QUICKSTART)[0]
    if vit_base:
        spec["backbone"] = {"name": "timm", "model": "vit_base_patch16_224"}
        spec["sae"] = {"name": "random", "d_in": 768, "d_sae": 6144, "layer": 6, "tokens": "patch"}
        spec["dataset"] = {**spec["dataset"], "image_size": 224}
    spec["run"] = {**spec["run"], "device": device, "batch_size": 64}
    if autocast:
        spec["run"]["autocast"] = autocast
    if limit:
        spec["run"]["limit"] = limit
    return spec
