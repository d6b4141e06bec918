"""The contracts between the core and every plugin.

A *backbone* turns images into hidden states (token vectors), an *SAE* turns one token's hidden state into
latents, an *attributor* explains one latent at one token as a heatmap over input patches, a *metric* scores
such a heatmap, and a *dataset* yields the images. The core only ever talks to plugins through these protocols.

Token positions
---------------
A backbone's token sequence is ``[prefix tokens..., patch tokens...]``: ``num_prefix_tokens`` leading tokens
(a class token, register tokens) followed by ``gh * gw`` patch tokens in row-major order. A position is an
index into that sequence; :attr:`Backbone.prefix_tokens` names the prefix positions (``"cls"``, ``"reg0"``...).

Layers and sites
----------------
``layer = L`` means the output of block ``L`` (0-based, ``0 <= L < depth``). Computing it runs blocks
``0..L`` only: never the rest of the model. A *site* names which activation of a layer is meant; the only one
every backbone provides is ``"resid_post"`` (:data:`DEFAULT_SITE`), the residual stream after block ``L``,
which is what ``forward_to`` returns. A backbone that provides others lists them in ``sites``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

import torch

from .context import RunContext
from .geometry import layer_grid, layer_width, own_patch
from .target import Target, TargetFunction

__all__ = [
    "DEFAULT_SITE",
    "layer_grid",
    "layer_width",
    "own_patch",
    "Attribution",
    "Attributor",
    "Backbone",
    "Dataset",
    "ImageItem",
    "Metric",
    "MetricResult",
    "RunContext",
    "SAE",
    "Target",
    "TargetFunction",
]


DEFAULT_SITE = "resid_post"


@dataclass
class ImageItem:
    """One image of a dataset.

    Attributes
    ----------
    image_id : str
        Stable identifier, unique within the dataset (a relative file path, an index...). The run store
        keys every result on it, so it must not change between runs of the same spec.
    image : PIL.Image.Image or torch.Tensor
        A PIL image, or a float tensor ``[3, H, W]`` with values in ``[0, 1]``.
    info : dict
        Optional annotations (labels, object masks) a report may use.
    """

    image_id: str
    image: Any
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Backbone(Protocol):
    """A vision model seen as a stack of blocks over a token sequence.

    Attributes
    ----------
    model : torch.nn.Module
        The underlying module (attributors may patch its submodules for the duration of one call).
    depth : int
        Number of blocks.
    width : int
        Token width ``D``.
    image_size : tuple of int
        ``(H, W)`` the model expects after preprocessing.
    patch_size : tuple of int
        ``(ph, pw)``: the input pixels that make up one patch token (for a conv net, the stride of the stage).
    grid_size : tuple of int
        ``(gh, gw)``: patch tokens per column and row; heatmaps have this shape.
    prefix_tokens : tuple of str
        Names of the tokens before the patch tokens, in order (``("cls",)``, ``("cls", "reg0", ...)`` or
        ``()``).

    Notes
    -----
    ``grid_size`` and ``patch_size`` describe the heatmap grid over the input. A backbone whose layers have
    token grids of their own (a conv net's stages) also defines ``layer_grid(layer) -> (h, w)`` and
    ``layer_width(layer) -> int``; ``forward_to(x, layer)`` then returns
    ``[B, len(prefix_tokens) + h * w, layer_width(layer)]``. Without them every layer has ``grid_size``
    tokens of width ``width`` (use :func:`layer_grid` and :func:`layer_width` to read either kind). A backbone
    that provides hidden states other than the output of a block lists their site names in ``sites``;
    without it, ``("resid_post",)``. A backbone that runs modules after block ``L`` to produce the tokens
    of layer ``L`` (a final LayerNorm, an attention-pool head) names them, as attribute names of ``model``, in
    ``trailing_modules(layer) -> tuple[str, ...]``, so that attributors with per-module rules (LRP) cover
    them too. A backbone that can compute block ``L``'s output at a few tokens for less than at all of them
    offers ``forward_to_tokens(x, layer, positions) -> [B, P, D]``, equal to ``forward_to(x, layer)[:,
    positions]``; the forward passes that only read latents (insertion and deletion curves, occlusion) use it.
    """

    model: torch.nn.Module
    depth: int
    width: int
    image_size: tuple[int, int]
    patch_size: tuple[int, int]
    grid_size: tuple[int, int]
    prefix_tokens: tuple[str, ...]

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        """Turn PIL images or ``[3, H, W]`` tensors in ``[0, 1]`` into the model input ``[B, 3, H, W]``."""
        ...

    def forward_to(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """Hidden states ``[B, T, D]`` at the output of block ``layer``, running blocks ``0..layer`` only."""
        ...

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Backbone":
        """Move the model (and any normalisation constants) in place; returns ``self``."""
        ...


@runtime_checkable
class SAE(Protocol):
    """A sparse autoencoder over one site of a backbone.

    Attributes
    ----------
    d_in : int
        Width of the hidden states it reads (must equal the backbone's ``width``).
    d_sae : int
        Number of latents.
    layer : int or None
        The block whose output it was trained on, when known.
    site : str, optional
        Which activation of that layer it reads (default ``"resid_post"``, the output of the block); the run
        checks that the backbone provides it.
    tokens : str, optional
        Which tokens it was trained on: ``"patch"``, ``"cls"`` or ``"all"``.

    Optional methods
    ----------------
    ``pre_activation_latents(h, latents) -> [N]``
        The latents before the nonlinearity, which attributors may explain instead of the latent itself
        (see :meth:`TargetFunction.pre_activation`).
    ``check_compatible(backbone, saes) -> list[str]``
        Problems that stop it from working on ``backbone`` (see :class:`Attributor`).
    """

    d_in: int
    d_sae: int
    layer: int | None

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        """All latents ``[..., d_sae]`` of hidden states ``[..., d_in]``."""
        ...

    def encode_latents(self, h: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Latent ``latents[i]`` of ``h[i]``: ``[N, d_in]``, ``[N]`` -> ``[N]``.

        Must be differentiable with respect to ``h`` and equal ``encode(h)[i, latents[i]]``; its value and
        gradient should flow through the requested rows of the encoder only. (An architecture whose
        activation depends on the other latents, like TopK, may read them without gradient to decide
        which latents are active.)
        """
        ...

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``[..., d_in]`` of latents ``[..., d_sae]``."""
        ...

    def to(self, *args: Any, **kwargs: Any) -> "SAE":
        """Move parameters like :meth:`torch.nn.Module.to` (an SAE is usually an ``nn.Module``)."""
        ...


@dataclass
class Attribution:
    """What an attributor returns.

    Attributes
    ----------
    heatmap : torch.Tensor
        ``[B, gh, gw]`` relevance of each input patch (higher means more responsible for z).
    pixels : torch.Tensor or None
        Optional ``[B, H, W]`` pixel-level map.
    info : dict
        Per-row diagnostics, each value a tensor ``[B]`` (a completeness delta, a conservation error...). The
        run store keeps them beside the heatmap. Under the names of :data:`cafe_core.results.DIAGNOSTICS`
        (``relative_delta``; ``conservation_error`` with ``z``) the summary of a run reports their median and
        largest value per attributor.
    """

    heatmap: torch.Tensor
    pixels: torch.Tensor | None = None
    info: dict[str, torch.Tensor] = field(default_factory=dict)


@runtime_checkable
class Attributor(Protocol):
    """Explains a batch of targets as heatmaps over input patches.

    Method knobs are constructor parameters (declared by the registration's ``params`` model); batch size,
    device, dtype and seed come from the :class:`RunContext`.

    Class attributes (capability flags)
    -----------------------------------
    needs_grad : bool
        Whether it backpropagates through the model.
    conserves_relevance : bool
        Whether the heatmap sums to z minus the relevance absorbed by biases (checked by the conformance kit
        when True).

    Optional methods
    ----------------
    ``check_compatible(backbone, saes) -> list[str]``
        Problems that stop it from working on ``backbone`` with the run's ``saes`` (an architecture it has no
        rules for, a layer whose tokens it cannot map, an SAE without a method it needs...), each naming the
        unsupported module and the fix; ``[]`` when none. ``cafe validate``
        and ``run`` call it on every attributor, metric and SAE after building them, before any image is
        processed. The same condition met at run time raises
        :class:`~cafe_core.errors.IncompatibleComponentError`.
    """

    needs_grad: bool
    conserves_relevance: bool

    def attribute(self, target: TargetFunction, x: torch.Tensor, context: RunContext) -> Attribution:
        """Heatmaps for the rows of ``x [B, 3, H, W]`` with respect to ``target``.

        Must leave the model exactly as it found it (no hooks, no patched modules, no parameter gradients).
        """
        ...


@dataclass
class MetricResult:
    """What a metric returns for a batch of heatmaps.

    Attributes
    ----------
    score : torch.Tensor
        ``[B]`` one number per heatmap.
    curve : torch.Tensor or None
        ``[B, S]`` the curve the score summarises (as scored, e.g. clipped), if any.
    raw_curve : torch.Tensor or None
        ``[B, S]`` the curve before clipping, if the metric clips.
    fractions : torch.Tensor or None
        ``[S]`` the x-axis of the curves (fraction of patches inserted or deleted).
    info : dict
        Further per-row values, each a tensor ``[B]``.
    """

    score: torch.Tensor
    curve: torch.Tensor | None = None
    raw_curve: torch.Tensor | None = None
    fractions: torch.Tensor | None = None
    info: dict[str, torch.Tensor] = field(default_factory=dict)


@runtime_checkable
class Metric(Protocol):
    """Scores heatmaps against the model (insertion, deletion...).

    Class attributes
    ----------------
    higher_is_better : bool or None
        Direction of the score, used by summaries; ``None`` for a descriptive score (such as how local an
        explanation is) that no direction makes better.
    ranking_based : bool, optional
        True when the score depends on the heatmap's ranking of patches only; the conformance kit then
        checks that a strictly increasing transform of the heatmap leaves the score unchanged.
    score_range : tuple of float, optional
        Bounds every finite score lies in, checked by the conformance kit.

    Optional methods
    ----------------
    ``check_compatible(backbone, saes) -> list[str]``
        As for :class:`Attributor`.
    """

    higher_is_better: bool | None

    def evaluate(
        self,
        target: TargetFunction,
        x: torch.Tensor,
        heatmap: torch.Tensor,
        context: RunContext,
        annotations: Sequence[dict[str, Any]] | None = None,
    ) -> MetricResult:
        """Score ``heatmap [B, gh, gw]`` for the rows of ``x [B, 3, H, W]`` with respect to ``target``.

        ``annotations`` holds the :attr:`ImageItem.info` of each row's image (a run always passes it); a
        metric that scores against ground truth reads it, the others ignore it.
        """
        ...


@runtime_checkable
class Dataset(Protocol):
    """A finite, indexable collection of :class:`ImageItem`.

    Optional methods
    ----------------
    image_file(index) -> (str, pathlib.Path)
        The ``image_id`` and file of item ``index``, for datasets of files: a run then fingerprints each image
        by its file (size, modification time, SHA-256) without decoding it. Without it, a run fingerprints each
        item by its decoded pixels, which reads every item once at the start.
    """

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> ImageItem: ...

    def __iter__(self) -> Iterator[ImageItem]: ...
