"""GradientSHAP: expected gradients between a blank and the (noisy) image, at random points of the path."""

from __future__ import annotations

import torch

from cafe_core.blanks import make_blank
from cafe_core.protocols import Attribution, RunContext, TargetFunction

from .functions import latent_function, to_attribution
from .rng import seeded_global_rng

__all__ = ["GradientShap"]


class GradientShap:
    """Heatmap of GradientSHAP (:class:`captum.attr.GradientShap`), summed over channels and patches.

    Each of ``n_samples`` samples adds Gaussian noise of standard deviation ``stdevs`` to the image, picks a
    point ``x0 + a (x' - x0)`` with ``a ~ U[0, 1]`` on the path from the blank ``x0`` to the noisy image
    ``x'``, and scores ``(x' - x0) * dz/dx`` there; the heatmap is the mean over samples. With
    ``stdevs = 0`` it is a Monte Carlo estimate of integrated gradients from the same blank.

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

    Notes
    -----
    **Randomness.** Captum draws from torch's and numpy's global generators. Each row is computed inside
    :func:`cafe_captum.rng.seeded_global_rng` seeded with ``context.seed`` (the caller's generator states
    are restored afterwards), so a row's heatmap depends on neither its neighbours in the batch nor on
    earlier calls, and all rows share the same random draws. The draws are split into groups of at most
    ``context.batch_size`` samples, so the heatmap is the same for every ``batch_size >= n_samples`` but
    changes (to another sample of the same estimator) with a smaller one; CPU and CUDA draw differently.

    **Cost.** ``n_samples`` forward and backward passes per row, in passes of at most
    ``context.batch_size`` images. Rows are not packed together, since each has its own blank.
    """

    needs_grad = True
    conserves_relevance = False

    def __init__(
        self, n_samples: int = 16, stdevs: float = 0.0, blank: str = "zeros", blur_sigma: float | None = None
    ) -> None:
        self.n_samples = int(n_samples)
        self.stdevs = float(stdevs)
        self.blank = blank
        self.blur_sigma = blur_sigma

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
        from captum.attr import GradientShap as CaptumGradientShap

        blank = make_blank(x.detach(), self.blank, self.blur_sigma)
        groups = list(context.chunks(self.n_samples))
        rows = []
        for i in range(len(x)):
            method = CaptumGradientShap(latent_function(target.select([i])))
            inputs, reference = x[i : i + 1].detach().clone(), blank[i : i + 1].detach()
            total = torch.zeros_like(inputs)
            with seeded_global_rng(context.seed, x.device):
                for group in groups:
                    size = group.stop - group.start
                    mean = method.attribute(inputs, baselines=reference, n_samples=size, stdevs=self.stdevs)
                    total += mean.detach() * size
            rows.append(total / self.n_samples)
        return to_attribution(torch.cat(rows), target.backbone.patch_size)
