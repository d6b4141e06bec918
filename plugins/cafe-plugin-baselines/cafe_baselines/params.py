"""Parameter models of the baseline attributors."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from cafe_core.batching import Batching
from cafe_core.blank_names import Blank, BlurSigma

__all__ = ["GradientXInputParams", "OcclusionParams", "RandomRankingParams"]


class GradientXInputParams(BaseModel):
    """Parameters of :class:`cafe_baselines.gradient_x_input.GradientXInput`.

    Attributes
    ----------
    absolute : bool
        Take the absolute value of every element of ``x * grad`` before summing over channels and patches,
        so that opposite-signed pixels of one patch do not cancel.
    batching : {"auto", "rows", "shared", "jacobian"}
        How the latents of one image share work: ``"rows"`` repeats the image for each latent, ``"shared"``
        runs one forward and a batched backward, ``"jacobian"`` reuses each token's Jacobian, ``"auto"``
        picks by the measured crossover. The maps are the same.
    """

    model_config = ConfigDict(extra="forbid")

    absolute: bool = False
    batching: Batching = "auto"


class OcclusionParams(BaseModel):
    """Parameters of :class:`cafe_baselines.occlusion.Occlusion`.

    Attributes
    ----------
    blank : {"zeros", "mean", "blur"}
        What an occluded patch shows, as in the insertion test: a zero model input, the image's per-channel
        mean colour, or a Gaussian blur of the image.
    blur_sigma : float or None
        Standard deviation of the blur in pixels; ``None`` means a tenth of the smaller image side.
    """

    model_config = ConfigDict(extra="forbid")

    blank: Blank = "zeros"
    blur_sigma: BlurSigma | None = None


class RandomRankingParams(BaseModel):
    """Parameters of :class:`cafe_baselines.random_ranking.RandomRanking`.

    Attributes
    ----------
    per_image : bool
        Mix the bytes of each row's input into its seed, so that every image gets its own ranking (by
        default a ranking depends on the run seed and the target only).
    """

    model_config = ConfigDict(extra="forbid")

    per_image: bool = False
