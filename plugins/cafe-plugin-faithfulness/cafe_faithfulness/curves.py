"""Insertion and deletion curves: the latent as ranked patches are put back into, or taken out of, the image."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from cafe_core.blanks import make_blank, patch_tiling_problem
from cafe_core.errors import IncompatibleComponentError
from cafe_core.patches import patches_to_pixels, rank_patches
from cafe_core.protocols import Backbone, MetricResult, RunContext, TargetFunction
from cafe_core.gradients import identical_rows
from cafe_core.shared_forward import latents_on_shared_images

from .adaptive import adaptive_points, interpolate

__all__ = [
    "Deletion",
    "Insertion",
    "PatchCurve",
    "composites_of_points",
    "curve_counts",
    "distinct_composites",
    "patch_ranks",
    "ranked_masks",
]


def curve_counts(n_patches: int, steps: int) -> list[int]:
    """Patches changed at each point of a curve: ``0, steps, 2 * steps, ...`` and always ``n_patches`` last.

    There are ``ceil(n_patches / steps) + 1`` points.
    """
    return list(range(0, n_patches, steps)) + [n_patches]


def ranked_masks(heatmap: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Which patches are among the ``count`` most relevant, for every count.

    Parameters
    ----------
    heatmap : torch.Tensor
        ``[B, gh, gw]``; ranked with :func:`cafe_core.patches.rank_patches`.
    counts : list of int
        Number of top patches marked at each of the ``S`` points.

    Returns
    -------
    torch.Tensor
        Boolean ``[B, S, gh, gw]``.
    """
    b, gh, gw = heatmap.shape
    rank_of = patch_ranks(heatmap)
    limits = torch.as_tensor(counts, device=rank_of.device)
    return (rank_of[:, None, :] < limits[None, :, None]).reshape(b, len(counts), gh, gw)


def patch_ranks(heatmap: torch.Tensor) -> torch.Tensor:
    """Rank of every patch in the heatmap's order (0 the most relevant): ``[B, gh * gw]`` from ``[B, gh, gw]``."""
    b, gh, gw = heatmap.shape
    order = rank_patches(heatmap)
    rank_of = torch.empty_like(order)
    rank_of.scatter_(1, order, torch.arange(gh * gw, device=order.device).expand(b, -1))
    return rank_of


def distinct_composites(x: torch.Tensor, masks: torch.Tensor, n_points: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group the points of ``B`` curves of ``n_points`` points by the image they show.

    A composite depends only on its input image and the set of patches changed, so the points of different
    targets and attributors on one image with the same set (always the blank and the full image) are one
    composite.

    Parameters
    ----------
    x : torch.Tensor
        ``[B, 3, H, W]``: rows may repeat an image (several targets of one image).
    masks : torch.Tensor
        Boolean ``[B * n_points, gh, gw]``, curve-major: the patches changed at each point.
    n_points : int
        Points per curve.

    Returns
    -------
    rows : torch.Tensor
        ``[U]`` the input row each distinct composite is made from.
    changed : torch.Tensor
        Boolean ``[U, gh, gw]``: its changed patches.
    of_point : torch.Tensor
        ``[B * n_points]`` the composite each point shows.
    """
    return composites_of_points(x, masks, torch.arange(len(x), device=x.device).repeat_interleave(n_points))


def composites_of_points(
    x: torch.Tensor, masks: torch.Tensor, row_of_point: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`distinct_composites` for points in any order: point ``p`` changes ``masks[p]`` of row
    ``row_of_point[p]`` of ``x``. Returns the same ``rows, changed, of_point``."""
    rows_of_image, image_of_row = (index.to(x.device) for index in identical_rows(x))
    image = image_of_row[row_of_point.to(x.device)]
    keys = torch.cat([image[:, None], masks.flatten(1).to(image.dtype)], dim=1)
    distinct, of_point = torch.unique(keys, dim=0, return_inverse=True)
    return rows_of_image[distinct[:, 0]], distinct[:, 1:].bool().reshape(-1, *masks.shape[1:]), of_point


class PatchCurve:
    """Shared implementation of :class:`Insertion` and :class:`Deletion`.

    Parameters
    ----------
    steps : int
        Patches inserted or removed between two points of the curve (at least 1).
    blank : {"zeros", "blur", "mean"} or "module:function"
        What a missing patch shows (see :func:`cafe_core.blanks.make_blank`).
    blur_sigma : float, optional
        Blur standard deviation in pixels, for ``blank="blur"``.
    clip : bool
        Clamp the normalised curve to ``[0, 1]`` before taking its area.
    resolution : {"full", "adaptive"}
        ``"full"`` evaluates every point of the curve. ``"adaptive"`` evaluates every ``initial_stride``-th
        point and both ends, then bisects the intervals where the curve moves until the bound on the area's
        error is at most ``tolerance`` (see :mod:`cafe_faithfulness.adaptive`: the bound assumes the curve is
        monotone between consecutive evaluated points); the points in between are filled by linear
        interpolation.
    tolerance : float
        For ``"adaptive"``: the largest bound on the area's error, in the score's units (at least 0).
    initial_stride : int
        For ``"adaptive"``: spacing, in points of the curve, of the first evaluated grid (at least 1).

    Attributes
    ----------
    name : str
        ``"insertion"`` or ``"deletion"``, as the metric is registered (named in error messages).
    ranking_based : bool
        Always True: only the order of the heatmap's values matters.
    score_range : tuple of float or None
        ``(0, 1)`` when clipping; unbounded otherwise.
    """

    name: str
    higher_is_better: bool
    inserting: bool
    ranking_based = True

    def __init__(
        self,
        steps: int = 1,
        blank: str = "zeros",
        blur_sigma: float | None = None,
        clip: bool = True,
        resolution: str = "full",
        tolerance: float = 0.01,
        initial_stride: int = 8,
    ) -> None:
        if resolution not in ("full", "adaptive"):
            raise ValueError(f"resolution must be 'full' or 'adaptive', got {resolution!r}")
        if not tolerance >= 0 or int(initial_stride) < 1:
            raise ValueError(f"tolerance must be >= 0 and initial_stride >= 1, got {tolerance}, {initial_stride}")
        self.steps = int(steps)
        self.blank = blank
        self.blur_sigma = blur_sigma
        self.clip = bool(clip)
        self.resolution = resolution
        self.tolerance = float(tolerance)
        self.initial_stride = int(initial_stride)
        self.score_range = (0.0, 1.0) if self.clip else None

    def check_compatible(self, backbone: Backbone, saes: Sequence[Any] = ()) -> list[str]:
        """Problems that stop the metric from working on ``backbone``: patches that do not tile its input."""
        problem = patch_tiling_problem(self.name, backbone)
        return [problem] if problem else []

    def evaluate(
        self,
        target: TargetFunction,
        x: torch.Tensor,
        heatmap: torch.Tensor,
        context: RunContext,
        annotations: Sequence[dict[str, Any]] | None = None,
    ) -> MetricResult:
        """Score ``heatmap [B, gh, gw]`` for the rows of ``x [B, 3, H, W]``.

        Parameters
        ----------
        target : TargetFunction
            The latent and token of each row.
        x : torch.Tensor
            Model inputs ``[B, 3, H, W]``.
        heatmap : torch.Tensor
            ``[B, gh, gw]`` relevance of each patch; only its ranking matters.
        context : RunContext
            ``batch_size`` bounds the images per forward pass.
        annotations : sequence of dict, optional
            The images' annotations; not used (the curves need only the model).

        Returns
        -------
        MetricResult
            ``score [B]`` the area under ``curve [B, S]`` over ``fractions [S]`` (patches changed / all
            patches); ``raw_curve`` the normalised curve before clipping; ``info["full_z"]`` the latent on
            the full image (a row where it is zero or not finite scores NaN) and ``info["raw_auc"]`` the
            area under ``raw_curve``. Curves, scores and fractions have the dtype of the latent's values (the
            run's dtype; float32 at least). With ``resolution="adaptive"`` the curves hold linear
            interpolations between the evaluated points (both curves interpolated from their own values
            there), ``info["points"]`` the number of points evaluated per row and ``info["auc_error_bound"]``
            the bound on the score's error reached (valid if the curve is monotone between evaluated points).

        Raises
        ------
        cafe_core.errors.IncompatibleComponentError
            If the backbone's patches do not tile ``x`` (:func:`cafe_core.blanks.patch_tiling_problem`).
        """
        self._check_inputs(target, x, heatmap)
        n_patches = heatmap.shape[1] * heatmap.shape[2]
        counts = torch.as_tensor(curve_counts(n_patches, self.steps), device=x.device)
        rank_of = patch_ranks(heatmap.to(x.device))
        blank = make_blank(x, self.blank, self.blur_sigma)

        def latents(rows: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
            return self._latents(target, x, blank, rank_of[rows] < counts[points, None], rows, context)

        if self.resolution == "adaptive":
            return self._adaptive(latents, len(x), counts)
        b, s = len(x), len(counts)
        rows = torch.arange(b, device=x.device).repeat_interleave(s)
        full_z, raw = self._normalised(latents(rows, torch.arange(s, device=x.device).repeat(b)).reshape(b, s))
        scored = self._scored(raw)
        fractions = counts.to(raw.dtype) / n_patches
        return MetricResult(
            score=torch.trapezoid(scored, fractions, dim=1),
            curve=scored,
            raw_curve=raw,
            fractions=fractions,
            info={"full_z": full_z, "raw_auc": torch.trapezoid(raw, fractions, dim=1)},
        )

    def _adaptive(
        self, latents: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], b: int, counts: torch.Tensor
    ) -> MetricResult:
        """The result of ``resolution="adaptive"`` (see :func:`cafe_faithfulness.adaptive.adaptive_points`)."""
        values, known, bound = adaptive_points(
            latents,
            lambda v: self._scored(self._normalised(v)[1]),
            b,
            counts,
            self.initial_stride,
            self.tolerance,
        )
        full_z, raw = self._normalised(values)
        fractions = counts.to(raw.dtype) / counts[-1]
        scored = interpolate(self._scored(raw), known, fractions)
        raw = interpolate(raw, known, fractions)
        return MetricResult(
            score=torch.trapezoid(scored, fractions, dim=1),
            curve=scored,
            raw_curve=raw,
            fractions=fractions,
            info={
                "full_z": full_z,
                "raw_auc": torch.trapezoid(raw, fractions, dim=1),
                "points": known.sum(dim=1).to(raw.dtype),
                "auc_error_bound": bound.to(raw.dtype),
            },
        )

    def _check_inputs(self, target: TargetFunction, x: torch.Tensor, heatmap: torch.Tensor) -> None:
        backbone = target.backbone
        gh, gw = backbone.grid_size
        b = len(x)
        if len(target) != b:
            raise ValueError(f"input has {b} rows but the target function has {len(target)}")
        if tuple(heatmap.shape) != (b, gh, gw):
            raise ValueError(
                f"heatmap must have shape [B, gh, gw] = {[b, gh, gw]} (one value per patch token of the "
                f"backbone's {gh}x{gw} grid), got {list(heatmap.shape)}"
            )
        problem = patch_tiling_problem(self.name, backbone, x.shape[-2:])
        if problem:
            raise IncompatibleComponentError(problem)

    def _latents(
        self,
        target: TargetFunction,
        x: torch.Tensor,
        blank: torch.Tensor,
        changed_patches: torch.Tensor,
        row_of_point: torch.Tensor,
        context: RunContext,
    ) -> torch.Tensor:
        """The latent at every point: ``changed_patches [P, gh * gw]`` of row ``row_of_point [P]``."""
        gh, gw = target.backbone.grid_size
        masks = changed_patches.reshape(-1, gh, gw)
        rows, changed, of_point = composites_of_points(x, masks, row_of_point)

        def composites(chunk: slice) -> torch.Tensor:
            kept = patches_to_pixels(changed[chunk].to(x.dtype), target.backbone.patch_size)[:, None]
            if not self.inserting:
                kept = 1 - kept
            return blank[rows[chunk]] * (1 - kept) + x[rows[chunk]] * kept

        return latents_on_shared_images(target.select(row_of_point), of_point, len(rows), composites, context)

    def _normalised(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``full_z [B]`` and the curve ``values [B, S]`` divided by it (NaN rows where it is 0 or not finite)."""
        # The run's dtype (a float64 run keeps float64 curves); a lower precision is widened to float32.
        values = values.to(torch.promote_types(values.dtype, torch.float32))
        full_z = values[:, -1] if self.inserting else values[:, 0]
        valid = torch.isfinite(full_z) & (full_z != 0)
        raw = values / torch.where(valid, full_z, torch.ones_like(full_z))[:, None]
        return full_z, torch.where(valid[:, None], raw, torch.full_like(raw, math.nan))

    def _scored(self, raw: torch.Tensor) -> torch.Tensor:
        return raw.clamp(0.0, 1.0) if self.clip else raw


class Insertion(PatchCurve):
    """Insertion: start from the blank image and put patches back, most relevant first.

    A faithful heatmap makes the latent recover quickly, so a higher area is better. See
    :class:`PatchCurve` for the parameters.
    """

    name = "insertion"
    higher_is_better = True
    inserting = True


class Deletion(PatchCurve):
    """Deletion: start from the image and blank patches out, most relevant first.

    A faithful heatmap makes the latent collapse quickly, so a lower area is better. See
    :class:`PatchCurve` for the parameters.
    """

    name = "deletion"
    higher_is_better = False
    inserting = False
