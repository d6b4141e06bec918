"""The quickstart's study as a spec dict, on the default model or over a timm ViT with random weights."""

from __future__ import annotations

import pathlib

from cafe_core.spec import read_spec_source

QUICKSTART = pathlib.Path(__file__).resolve().parents[1] / "examples" / "quickstart.toml"

RANDOM_VITS = {
    "vit_small": ("vit_small_patch16_224", 384, 3072),
    "vit_base": ("vit_base_patch16_224", 768, 6144),
}
"""Larger models: the timm architecture (random weights), its width and the random SAE's number of latents."""


def quickstart_study(
    model: str, device: str, autocast: str | None = None, limit: int | None = None, batch_size: int = 64
) -> dict:
    """The quickstart's targets, attributors and metrics on ``device``.

    ``model``: ``"toy"`` (the default model) or a key of :data:`RANDOM_VITS`: that timm ViT with random
    weights and a random SAE at block 6, on 224x224 shapes.
    """
    spec = read_spec_source(QUICKSTART)[0]
    if model != "toy":
        architecture, width, latents = RANDOM_VITS[model]
        spec["backbone"] = {"name": "timm", "model": architecture}
        spec["sae"] = {"name": "random", "d_in": width, "d_sae": latents, "layer": 6, "tokens": "patch"}
        spec["dataset"] = {**spec["dataset"], "image_size": 224}
    spec["run"] = {**spec["run"], "device": device, "batch_size": batch_size}
    if autocast:
        spec["run"]["autocast"] = autocast
    if limit:
        spec["run"]["limit"] = limit
    return spec
