"""GradientSHAP: expected gradients between a blank and the (noisy) image, at random points of the path."""

from __future__ import annotations

import numpy as np
import torch

from cafe_core.blanks import make_blank
from cafe_core.path_gradients import PointSet, path_gradients, path_groups
from cafe_core.protocols import Attribution, RunContext, TargetFunction

from .functions import to_attribution
from .rng import seeded_global_rng

__all__ = ["GradientShap"]


class GradientShap:
    """Heatmap of GradientSHAP (:class:`captum.attr.GradientShap`), summed over channels and patches.

    Each of ``n_samples`` samples adds Gaussian noise of standard deviation ``stdevs`` to the image, picks a
    point ``x0 + a (x' - x0)`` with ``a ~ U[0, 1]`` on the path from the blank ``x0`` to the noisy image
    ``x'``, and scores ``(x' - x0) * dz/dx`` there; the heatmap is the mean over samples. With
    ``stdevs = 0`` it is a Monte Carlo estimate of integrated gradients from the same blank.

    What :class:`captum.attr.GradientShap` computes, with Captum's own random draws (the tests compare the
    two), through cafe's shared path gradients (:func:`cafe_core.path_gradients.path_gradients`).

    Parameters
    ----------
    n_samples : int
        Samples per heatmap.
    stdevs : float
        Noise standard deviation in model-input units (0 for none).
    blank : {"zeros", "mean", "blur"} or "module:function"
        The reference, as the insertion test's blank (:func:`cafe_core.blanks.make_blank`). It is
        made from each image, so every row draws from its own blank: the distribution Captum samples
        from is that single blank.
    blur_sigma : float, optional
        Blur standard deviation in pixels; by default a tenth of the smaller image side.
    batching : {"auto", "rows", "shared"}
        How rows of one image (and blank) share its sampled points; every choice gives the same maps.

    Notes
    -----
    **Randomness.** Captum draws from torch's and numpy's global generators; the same calls are made here,
    in Captum's order, inside :func:`cafe_captum.rng.seeded_global_rng` seeded with ``context.seed`` (the
    caller's generator states are restored afterwards), so a row's heatmap is the one Captum gives when
    seeded so, it depends on neither its neighbours in the batch nor on earlier calls, and all rows share
    the same random draws. The draws are split into groups of at most ``context.batch_size`` samples (one
    Captum call each), so the heatmap is the same for every ``batch_size >= n_samples`` but changes (to
    another sample of the same estimator) with a smaller one; CPU and CUDA draw differently.

    **Cost.** ``n_samples`` points per distinct image and blank, forwarded in passes of at most
    ``context.batch_size`` images (the points of several images are packed into one pass). Since every row
    draws the same numbers, the rows of one image have the same points: ``K`` latents of one image cost
    ``n_samples`` forwards, not ``K * n_samples``, and their vector-Jacobian products run as batched backward
    passes of at most ``context.batch_size`` images in all (``batching="rows"`` forwards every row's points).
    """

    needs_grad = True
    conserves_relevance = False

    def __init__(
        self,
        n_samples: int = 16,
        stdevs: float = 0.0,
        blank: str = "zeros",
        blur_sigma: float | None = None,
        batching: str = "auto",
    ) -> None:
        self.n_samples = int(n_samples)
        self.stdevs = float(stdevs)
        self.blank = blank
        self.blur_sigma = blur_sigma
        self.batching = batching

    def attribute(self, target: TargetFunction, x: torch.Tensor, context: RunContext) -> Attribution:
        """GradientSHAP maps of the rows of ``x [B, 3, H, W]``.

        Parameters
        ----------
        target : TargetFunction
            The latent and token of each row.
        x : torch.Tensor
            Model inputs ``[B, 3, H, W]``.
        context : RunContext
            ``batch_size`` bounds the images per pass; ``seed`` seeds the draws.

        Returns
        -------
        Attribution
            ``heatmap [B, gh, gw]`` and ``pixels [B, H, W]`` (summed over channels).
        """
        inputs = x.detach()
        blank = make_blank(inputs, self.blank, self.blur_sigma).detach()
        noise, coefficients = self._draws(inputs, context)
        sets = [
            _samples(rows, inputs[rows[0] : rows[0] + 1], blank[rows[0] : rows[0] + 1], noise, coefficients)
            for rows in path_groups(target, torch.cat([inputs.flatten(1), blank.flatten(1)], 1), self.batching)
        ]
        total = path_gradients(target, sets, context, like=inputs)
        return to_attribution(total / self.n_samples, target.backbone.patch_size)

    def _draws(self, x: torch.Tensor, context: RunContext) -> tuple[torch.Tensor, torch.Tensor]:
        """The noise ``[n_samples, 3, H, W]`` and path coefficients ``[n_samples]`` every row draws.

        Captum's calls, in its order, once per group of at most ``context.batch_size`` samples: the indices
        of the blanks (numpy; a single blank), the Gaussian noise (torch), the coefficients (numpy).
        """
        noise, coefficients = [], []
        with seeded_global_rng(context.seed, x.device):
            for group in context.chunks(self.n_samples):
                size = group.stop - group.start
                np.random.choice(1, size)
                spread = torch.tensor(self.stdevs, device=x.device).repeat((size, *x.shape[1:]))
                noise.append(torch.normal(0, spread))
                uniform = np.random.uniform(0.0, 1.0, size)
                coefficients.append(torch.tensor(uniform, device=x.device, dtype=x.dtype))
        return torch.cat(noise), torch.cat(coefficients)


def _samples(
    rows: torch.Tensor, image: torch.Tensor, blank: torch.Tensor, noise: torch.Tensor, coefficients: torch.Tensor
) -> PointSet:
    """The sampled points of one image (``[1, 3, H, W]`` image and blank), weighted by noisy image minus blank."""

    def noisy(sl: slice) -> torch.Tensor:
        return image + noise[sl]

    def points(sl: slice) -> torch.Tensor:
        a = coefficients[sl].view(-1, *([1] * (image.dim() - 1)))
        return a * noisy(sl) + (1.0 - a) * blank  # Captum's expression

    def weights(sl: slice) -> torch.Tensor:
        return noisy(sl) - blank

    return PointSet(rows, len(coefficients), points, weights)
