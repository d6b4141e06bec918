"""The scalar functions Captum differentiates, and the conversions every Captum attributor shares."""

from __future__ import annotations

from typing import Any, Callable

import torch

from cafe_core.errors import IncompatibleComponentError
from cafe_core.patches import pixels_to_patches
from cafe_core.protocols import Attribution, TargetFunction

__all__ = ["check_quantity", "latent_function", "pre_activation_problem", "to_attribution"]


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


def latent_function(target: TargetFunction, quantity: str = "post") -> Callable[[torch.Tensor], torch.Tensor]:
    """``x [N, 3, H, W] -> [N]``: the rows of ``target`` as a forward function for Captum.

    Captum evaluates a function on stacked copies of its inputs (one copy per integration step or per
    sample, copy-major), so input row ``r`` is explained with respect to row ``r % len(target)``.

    Parameters
    ----------
    target : TargetFunction
        The latent and token of each row.
    quantity : {"post", "pre"}
        ``"post"``: the latent ``z`` (after the SAE's activation). ``"pre"``: its pre-activation
        ``W_e (h - b_d) + b_e``, read with the SAE's ``pre_activation_latents(h, latents)``.

    Returns
    -------
    callable
        The forward function.

    Raises
    ------
    cafe_core.errors.IncompatibleComponentError
        For ``quantity="pre"`` with an SAE that has no ``pre_activation_latents``.
    """
    check_quantity(target.sae, quantity)

    def forward(x: torch.Tensor) -> torch.Tensor:
        rows = target.tile(x.shape[0] // len(target))
        return rows(x) if quantity == "post" else rows.pre_activation(x)

    return forward


def to_attribution(
    attributions: torch.Tensor, patch_size: tuple[int, int], info: dict[str, torch.Tensor] | None = None
) -> Attribution:
    """An :class:`Attribution` from input-shaped attributions ``[B, C, H, W]``.

    The pixel map is the sum over channels, the heatmap its sum within each patch.
    """
    pixels = attributions.detach().sum(dim=1)
    return Attribution(heatmap=pixels_to_patches(pixels, patch_size), pixels=pixels, info=dict(info or {}))
