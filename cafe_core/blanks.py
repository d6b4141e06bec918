"""What a missing patch shows: the blank images shared by insertion, deletion, occlusion and path baselines."""

from __future__ import annotations

import importlib
import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from .blank_names import BLANKS, Blank, BlurSigma, check_blank

__all__ = [
    "BLANKS",
    "Blank",
    "BlurSigma",
    "DEFAULT_BLUR_FRACTION",
    "blur_radius",
    "check_blank",
    "gaussian_blur",
    "make_blank",
    "patch_tiling_problem",
]

DEFAULT_BLUR_FRACTION = 0.1
"""Default blur sigma as a fraction of the smaller image side: strong enough to erase object detail."""


def blur_radius(sigma: float, height: int, width: int) -> int:
    """Half-width of the blur kernel: ``ceil(3 * sigma)``, at most ``min(height, width) - 1``.

    The bound keeps reflect padding valid (it cannot reach further than the image's own width).
    """
    return max(0, min(math.ceil(3.0 * sigma), min(height, width) - 1))


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of every channel of ``x [B, C, H, W]``.

    A separable convolution (``conv2d``, one channel at a time) with a normalised Gaussian kernel truncated
    at :func:`blur_radius`, the image extended by reflection (``F.pad(mode="reflect")``, which does not
    repeat the edge pixel).

    Parameters
    ----------
    x : torch.Tensor
        Images ``[B, C, H, W]``.
    sigma : float
        Standard deviation in pixels (> 0, as :data:`BlurSigma` checks).

    Returns
    -------
    torch.Tensor
        Blurred images, same shape and dtype as ``x``.
    """
    _, c, h, w = x.shape
    radius = blur_radius(sigma, h, w)
    if radius == 0:
        return x.clone()
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(device=x.device, dtype=x.dtype)
    rows = kernel.reshape(1, 1, 1, -1).expand(c, 1, 1, -1)
    cols = kernel.reshape(1, 1, -1, 1).expand(c, 1, -1, 1)
    out = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), rows, groups=c)
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), cols, groups=c)


def _custom_blank(kind: str) -> Callable[[torch.Tensor], torch.Tensor]:
    module, _, attr = kind.partition(":")
    try:
        function = importlib.import_module(module)
        for part in attr.split("."):
            function = getattr(function, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import blank {kind!r}: {exc}") from None
    return function


def make_blank(x: torch.Tensor, kind: str, blur_sigma: float | None = None) -> torch.Tensor:
    """The blank image of each row of ``x [B, C, H, W]`` (in model-input space).

    Parameters
    ----------
    x : torch.Tensor
        Model inputs ``[B, C, H, W]``.
    kind : {"zeros", "mean", "blur"} or "module:function"
        A name :data:`Blank` accepts (the params model that holds it has checked it). ``"zeros"``: a zero
        input (the normalisation mean colour for a normalised model input).
        ``"mean"``: each image's per-channel mean colour. ``"blur"``: :func:`gaussian_blur` of the image.
        ``"module:function"``: a function of ``x`` returning blanks of its shape (from another plugin, say).
        Normalisation is affine per channel, so the mean and the blur of the normalised image are the
        normalised mean and blur of the raw image.
    blur_sigma : float, optional
        Blur standard deviation in pixels; default :data:`DEFAULT_BLUR_FRACTION` times the smaller side.

    Returns
    -------
    torch.Tensor
        ``[B, C, H, W]``.
    """
    if kind == "zeros":
        return torch.zeros_like(x)
    if kind == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    if kind == "blur":
        sigma = blur_sigma if blur_sigma is not None else DEFAULT_BLUR_FRACTION * min(x.shape[-2:])
        return gaussian_blur(x, sigma)
    blank = _custom_blank(kind)(x)
    if not torch.is_tensor(blank) or blank.shape != x.shape:
        shape = tuple(blank.shape) if torch.is_tensor(blank) else type(blank).__name__
        raise ValueError(f"blank {kind!r} returned {shape} for inputs of shape {tuple(x.shape)}; it must match")
    return blank.to(x)


def patch_tiling_problem(who: str, backbone: Any, image_size: Sequence[int] | None = None) -> str | None:
    """Why ``who`` cannot blank the backbone's patches in an input of ``image_size``; ``None`` when it can.

    Blanking patch ``(r, c)`` replaces the pixels ``[r * ph, (r + 1) * ph) x [c * pw, (c + 1) * pw)``, so the
    ``gh x gw`` grid of ``ph x pw`` patches must cover the input exactly.

    Parameters
    ----------
    who : str
        The component that blanks patches, named in the message.
    backbone : Backbone
        Its ``grid_size`` and ``patch_size`` describe the patches.
    image_size : sequence of int, optional
        ``(H, W)`` of the input; by default the backbone's ``image_size`` (what its ``preprocess`` returns).

    Returns
    -------
    str or None
        The problem, naming the backbone's class and the fix.
    """
    (gh, gw), (ph, pw) = backbone.grid_size, backbone.patch_size
    height, width = (int(side) for side in (backbone.image_size if image_size is None else image_size))
    if (height, width) == (gh * ph, gw * pw):
        return None
    kind = type(backbone)
    return (
        f"{who} blanks whole patches, but the grid of {kind.__name__} ({kind.__module__}), {gh}x{gw} patches of "
        f"{ph}x{pw} pixels, covers {gh * ph}x{gw * pw} pixels and the input is {height}x{width}; use inputs of "
        "the backbone's image_size (its preprocess makes them), and a backbone whose image_size is its "
        "grid_size times its patch_size"
    )
