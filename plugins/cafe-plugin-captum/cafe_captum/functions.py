"""Checks and conversions every Captum attributor shares."""

from __future__ import annotations

from typing import Any

import torch

from cafe_core.errors import IncompatibleComponentError
from cafe_core.patches import pixels_to_patches
from cafe_core.protocols import Attribution

__all__ = ["check_quantity", "pre_activation_problem", "to_attribution"]


def pre_activation_problem(sae: Any) -> str | None:
    """Why the pre-activation of ``sae``'s latents cannot be explained (it has no ``pre_activation_latents``)."""
    if callable(getattr(sae, "pre_activation_latents", None)):
        return None
    kind = type(sae)
    return (
        f"quantity='pre' needs an SAE with pre_activation_latents(h, latents); {kind.__name__} "
        f"({kind.__module__}) has none: use quantity='post', or an SAE from cafe-plugin-sae"
    )


def check_quantity(sae: Any, quantity: str) -> None:
    """Raise :class:`~cafe_core.errors.IncompatibleComponentError` if ``sae`` cannot explain ``quantity``."""
    problem = pre_activation_problem(sae) if quantity == "pre" else None
    if problem:
        raise IncompatibleComponentError(problem)


def to_attribution(
    attributions: torch.Tensor, patch_size: tuple[int, int], info: dict[str, torch.Tensor] | None = None
) -> Attribution:
    """An :class:`Attribution` from input-shaped attributions ``[B, C, H, W]``.

    The pixel map is the sum over channels, the heatmap its sum within each patch.
    """
    pixels = attributions.detach().sum(dim=1)
    return Attribution(heatmap=pixels_to_patches(pixels, patch_size), pixels=pixels, info=dict(info or {}))
