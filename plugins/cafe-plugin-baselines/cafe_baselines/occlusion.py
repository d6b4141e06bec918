"""Occlusion: how much the latent drops when one patch at a time is replaced by a blank."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from cafe_core.blanks import make_blank, patch_tiling_problem
from cafe_core.errors import IncompatibleComponentError
from cafe_core.patches import patches_to_pixels
from cafe_core.protocols import Attribution, Backbone, RunContext, TargetFunction
from cafe_core.gradients import identical_rows
from cafe_core.shared_forward import latents_on_shared_images

__all__ = ["Occlusion"]


class Occlusion:
    """Heatmap of ``z(x) - z(x with patch p blanked)`` for every patch ``p`` alone.

    Parameters
    ----------
    blank : {"zeros", "mean", "blur"}
        What an occluded patch shows, as in the insertion test
        (:func:`cafe_core.blanks.make_blank`): a zero model input, the image's per-channel mean
        colour, or a Gaussian blur of the image.
    blur_sigma : float, optional
        Blur standard deviation in pixels; by default a tenth of the smaller image side.

    Notes
    -----
    **Cost.** ``gh * gw + 1`` forward passes of the trunk (up to the SAE's layer) per distinct image and no
    backward pass: 196 + 1 for a 224-pixel ViT with 16-pixel patches. Rows that show the same image (several
    latents of one image) read their latents from the same forward passes, so K latents of an image cost
    about one. The occluded copies run as batched forward passes of at most ``context.batch_size`` images,
    built one chunk at a time.

    A positive value means the patch supports the latent, a negative one that hiding it raises the latent.
    The drops of single patches need not add up to ``z``: patches that back each other up each show a
    small drop. ``info["z"]`` holds ``z(x)``.
    """

    needs_grad = False
    conserves_relevance = False

    def __init__(self, blank: str = "zeros", blur_sigma: float | None = None) -> None:
        self.blank = blank
        self.blur_sigma = blur_sigma

    def check_compatible(self, backbone: Backbone, saes: Sequence[Any] = ()) -> list[str]:
        """Problems that stop occlusion from working on ``backbone``: patches that do not tile its input."""
        problem = patch_tiling_problem("occlusion", backbone)
        return [problem] if problem else []

    def attribute(self, target: TargetFunction, x: torch.Tensor, context: RunContext) -> Attribution:
        """Occlusion maps of the rows of ``x [B, 3, H, W]``.

        Parameters
        ----------
        target : TargetFunction
            The latent and token of each row.
        x : torch.Tensor
            Model inputs ``[B, 3, H, W]``.
        context : RunContext
            ``batch_size`` bounds the images per forward pass.

        Returns
        -------
        Attribution
            ``heatmap [B, gh, gw]`` (the drop of ``z`` when each patch is blanked) and ``info["z"]``.

        Raises
        ------
        cafe_core.errors.IncompatibleComponentError
            If the backbone's patches do not tile ``x`` (:func:`cafe_core.blanks.patch_tiling_problem`).
        """
        backbone = target.backbone
        (gh, gw), (ph, pw) = backbone.grid_size, backbone.patch_size
        problem = patch_tiling_problem("occlusion", backbone, x.shape[-2:])
        if problem:
            raise IncompatibleComponentError(problem)
        b, n_patches = len(x), gh * gw
        blank = make_blank(x, self.blank, self.blur_sigma)
        # Per distinct image: its n_patches occluded copies, then the image itself; every row reads them all.
        rows, image_of_row = (index.to(x.device) for index in identical_rows(x))
        per_image = n_patches + 1
        hide = torch.cat([torch.eye(n_patches, dtype=torch.bool, device=x.device),
                          torch.zeros(1, n_patches, dtype=torch.bool, device=x.device)]).reshape(per_image, gh, gw)

        def occluded(chunk: slice) -> torch.Tensor:
            index = torch.arange(chunk.start, chunk.stop, device=x.device)
            source = rows[torch.div(index, per_image, rounding_mode="floor")]
            hidden = patches_to_pixels(hide[index % per_image], (ph, pw))[:, None]
            return torch.where(hidden, blank[source], x[source])

        image_of_reader = (image_of_row[:, None] * per_image + torch.arange(per_image, device=x.device)).reshape(-1)
        values = latents_on_shared_images(
            target.repeat_interleave(per_image), image_of_reader, len(rows) * per_image, occluded, context
        ).reshape(b, per_image)
        z = values[:, -1]
        drop = z[:, None] - values[:, :-1]
        return Attribution(heatmap=drop.reshape(b, gh, gw), info={"z": z})
