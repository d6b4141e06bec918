"""The contracts between the core and every plugin.

A *backbone* turns images into token activations, an *SAE* turns one token's activation into latents, an
*attributor* explains one latent at one token as a heatmap over input patches, a *metric* scores such a
heatmap, and a *dataset* yields the images. The core only ever talks to plugins through these protocols.

Token positions
---------------
A backbone's token sequence is ``[prefix tokens..., patch tokens...]``: ``num_prefix_tokens`` leading tokens
(a class token, register tokens) followed by ``gh * gw`` patch tokens in row-major order. A position is an
index into that sequence; :attr:`Backbone.prefix_tokens` names the prefix positions (``"cls"``, ``"reg0"``...).

Layers
------
``layer = L`` means the output of block ``L`` (0-based, ``0 <= L < depth``). Computing it runs blocks
``0..L`` only: never the rest of the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

import torch

__all__ = [
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


@dataclass(frozen=True, order=True)
class Target:
    """One thing to explain: latent ``latent`` of the SAE at ``layer``, read at token ``position``."""

    layer: int
    latent: int
    position: int


@dataclass(frozen=True)
class RunContext:
    """Execution settings every component receives from the run, so that no method can miss them.

    Attributes
    ----------
    batch_size : int
        Largest number of images a component may push through the model at once (internal batching of
        integration steps, insertion steps and occlusions all respect it).
    device : torch.device
        Where the model and inputs live.
    dtype : torch.dtype
        Floating point type of the inputs.
    seed : int
        Seed for any randomness (baselines, random rankings, noise tunnels).
    """

    batch_size: int = 16
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    seed: int = 0

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU generator seeded from ``seed + offset``; reproducible across devices."""
        return torch.Generator().manual_seed(self.seed + offset)

    def chunks(self, n: int) -> Iterator[slice]:
        """Consecutive slices of at most ``batch_size`` rows covering ``range(n)``."""
        for start in range(0, n, self.batch_size):
            yield slice(start, min(start + self.batch_size, n))


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
    tokens of width ``width`` (use :func:`layer_grid` and :func:`layer_width` to read either kind).
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
        """Token activations ``[B, T, D]`` at the output of block ``layer``, running blocks ``0..layer`` only."""
        ...

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Backbone":
        """Move the model (and any normalisation constants) in place; returns ``self``."""
        ...


def layer_grid(backbone: Any, layer: int) -> tuple[int, int]:
    """The token grid ``(h, w)`` of a backbone's layer (its heatmap grid unless it defines ``layer_grid``)."""
    method = getattr(backbone, "layer_grid", None)
    return tuple(method(layer)) if callable(method) else tuple(backbone.grid_size)


def layer_width(backbone: Any, layer: int) -> int:
    """The token width of a backbone's layer (``width`` unless it defines ``layer_width``)."""
    method = getattr(backbone, "layer_width", None)
    return int(method(layer)) if callable(method) else int(backbone.width)


def own_patch(backbone: Any, layer: int, positions: torch.Tensor) -> torch.Tensor:
    """Index (row-major) of the heatmap patch that holds each token's own cell; -1 for prefix tokens.

    A token of a layer whose grid is finer than the heatmap grid lies in the heatmap patch covering it.
    """
    h, w = layer_grid(backbone, layer)
    gh, gw = backbone.grid_size
    cell = positions - len(backbone.prefix_tokens)
    row, col = torch.div(cell.clamp_min(0), w, rounding_mode="floor"), cell.clamp_min(0) % w
    patch = torch.div(row * gh, h, rounding_mode="floor") * gw + torch.div(col * gw, w, rounding_mode="floor")
    return torch.where(cell >= 0, patch, torch.full_like(patch, -1))


@runtime_checkable
class SAE(Protocol):
    """A sparse autoencoder over one site of a backbone.

    Attributes
    ----------
    d_in : int
        Width of the activations it reads (must equal the backbone's ``width``).
    d_sae : int
        Number of latents.
    layer : int or None
        The block whose output it was trained on, when known.
    site : str
        Which tokens it was trained on: ``"patch"``, ``"cls"`` or ``"all"``.
    """

    d_in: int
    d_sae: int
    layer: int | None
    site: str

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        """All latents ``[..., d_sae]`` of activations ``[..., d_in]``."""
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

    # Optional: ``pre_activation_latents(h, latents) -> [N]``, the latents before the nonlinearity, which
    # attributors may explain instead of the latent itself (see TargetFunction.pre_activation).

    def to(self, *args: Any, **kwargs: Any) -> "SAE":
        """Move parameters like :meth:`torch.nn.Module.to` (an SAE is usually an ``nn.Module``)."""
        ...


class TargetFunction:
    """``f(x) -> z``: a batch of targets as a differentiable function of the input images.

    Row ``i`` of the input is explained with respect to latent ``latents[i]`` read at token ``positions[i]``,
    so one image may appear in several rows to explain several of its latents at once.

    Parameters
    ----------
    backbone : Backbone
        The model; only blocks ``0..layer`` run.
    sae : SAE
        The dictionary; only the rows of ``W_e`` named by ``latents`` are used.
    layer : int
        Block whose output the SAE reads.
    latents, positions : torch.Tensor
        Long tensors ``[B]``.
    """

    def __init__(
        self,
        backbone: Backbone,
        sae: SAE,
        layer: int,
        latents: torch.Tensor | Sequence[int],
        positions: torch.Tensor | Sequence[int],
    ) -> None:
        self.backbone = backbone
        self.sae = sae
        self.layer = int(layer)
        self.latents = torch.as_tensor(latents, dtype=torch.long).reshape(-1)
        self.positions = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
        if self.latents.shape != self.positions.shape:
            raise ValueError(
                f"latents and positions must have the same length, got {len(self.latents)} and "
                f"{len(self.positions)}"
            )

    @classmethod
    def for_targets(cls, backbone: Backbone, sae: SAE, targets: Sequence[Target]) -> "TargetFunction":
        """Build the function of a list of targets that share one layer."""
        layers = {t.layer for t in targets}
        if len(layers) != 1:
            raise ValueError(f"targets of one TargetFunction must share a layer, got layers {sorted(layers)}")
        return cls(backbone, sae, layers.pop(), [t.latent for t in targets], [t.position for t in targets])

    def __len__(self) -> int:
        return len(self.latents)

    @property
    def targets(self) -> list[Target]:
        """The rows as :class:`Target` objects."""
        return [Target(self.layer, int(n), int(k)) for n, k in zip(self.latents, self.positions)]

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Token activations ``[B, T, D]`` at the SAE's layer."""
        return self.backbone.forward_to(x, self.layer)

    def from_tokens(self, h: torch.Tensor) -> torch.Tensor:
        """``z [B]`` from token activations ``[B, T, D]`` (row ``i`` reads token ``positions[i]``)."""
        rows = torch.arange(h.shape[0], device=h.device)
        picked = h[rows, self.positions.to(h.device)]
        return self.sae.encode_latents(picked, self.latents.to(h.device))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``z [B]``: the target latent of each row of ``x [B, 3, H, W]``."""
        if x.shape[0] != len(self):
            raise ValueError(f"input has {x.shape[0]} rows but the target function has {len(self)}")
        return self.from_tokens(self.tokens(x))

    def select(self, index: torch.Tensor | Sequence[int] | slice) -> "TargetFunction":
        """The function restricted to some rows."""
        return TargetFunction(self.backbone, self.sae, self.layer, self.latents[index], self.positions[index])

    def tile(self, copies: int) -> "TargetFunction":
        """The rows repeated as ``copies`` whole copies, copy-major (the layout of stacked path samples)."""
        return self.select(torch.arange(copies * len(self)) % len(self))

    def pre_activation_from_tokens(self, h: torch.Tensor) -> torch.Tensor:
        """The latents' pre-activations ``[B]`` (before the SAE's nonlinearity) from tokens ``[B, T, D]``.

        Raises
        ------
        TypeError
            If the SAE has no ``pre_activation_latents(h, latents)``.
        """
        method = getattr(self.sae, "pre_activation_latents", None)
        if not callable(method):
            raise TypeError(
                f"{type(self.sae).__name__} has no pre_activation_latents(h, latents), so its pre-activations "
                "cannot be explained; explain the latent itself instead"
            )
        rows = torch.arange(h.shape[0], device=h.device)
        return method(h[rows, self.positions.to(h.device)], self.latents.to(h.device))

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """The latents' pre-activations ``[B]`` of ``x [B, 3, H, W]``."""
        return self.pre_activation_from_tokens(self.tokens(x))

    def repeat_interleave(self, repeats: int) -> "TargetFunction":
        """Each row repeated ``repeats`` times in place (for step-wise curves over one target)."""
        return TargetFunction(
            self.backbone,
            self.sae,
            self.layer,
            self.latents.repeat_interleave(repeats),
            self.positions.repeat_interleave(repeats),
        )

    def batched(self, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        """``self(x)`` computed in chunks of ``batch_size`` rows without gradients."""
        with torch.no_grad():
            return torch.cat([self.select(rows)(x[rows]) for rows in RunContext(batch_size=batch_size).chunks(len(x))])


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
        run store keeps them beside the heatmap.
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
    higher_is_better : bool
        Direction of the score, used by summaries.
    ranking_based : bool, optional
        True when the score depends on the heatmap's ranking of patches only; the conformance kit then
        checks that a strictly increasing transform of the heatmap leaves the score unchanged.
    score_range : tuple of float, optional
        Bounds every finite score lies in, checked by the conformance kit.
    uses_annotations : bool, optional
        True for a metric that scores against ground truth: ``evaluate`` then also receives
        ``annotations``, the :attr:`ImageItem.info` of each row's image.
    """

    higher_is_better: bool

    def evaluate(
        self, target: TargetFunction, x: torch.Tensor, heatmap: torch.Tensor, context: RunContext
    ) -> MetricResult:
        """Score ``heatmap [B, gh, gw]`` for the rows of ``x [B, 3, H, W]`` with respect to ``target``."""
        ...


@runtime_checkable
class Dataset(Protocol):
    """A finite, indexable collection of :class:`ImageItem`."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> ImageItem: ...

    def __iter__(self) -> Iterator[ImageItem]: ...
