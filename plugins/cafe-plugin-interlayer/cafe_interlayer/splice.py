"""The SAE path at a source layer: hidden states replaced by their SAE reconstruction plus the error.

Inside :func:`sae_path`, a forward hook on block ``L'`` of the backbone replaces its output ``h`` at the
tokens the source SAE reads by

    ``h_hat = recon(z') + e``,    ``z' = encode(h)``,    ``e = h - recon(z')``,

where ``recon(z) = W_d z + b`` is the SAE's reconstruction in the scale of ``h`` (affine in ``z``), and ``z'``
and ``e`` are fresh leaves: the forward value is unchanged, and a backward pass from a later latent stops at
them. The error ``e`` is its own leaf, so that what the SAE misses is attributed as such. The tokens the SAE
does not read (the class token for a patch-token SAE) pass through as a third leaf, ``u``. ``recon(0)``, the
reconstruction of no latents (the decoder bias), is a constant.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

__all__ = ["Edit", "Source", "SourceLeaves", "covered_positions", "reconstruct", "sae_path", "splice_problem"]

Edit = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``(latents [N, Tc, d_sae], error [N, Tc, D]) -> (latents, error)``: what a forward pass puts in their place."""


@dataclass(frozen=True)
class Source:
    """A source SAE at an earlier layer.

    Attributes
    ----------
    backbone : Backbone
        The model (a timm-style ViT with ``model.blocks``).
    sae : SAE
        The source SAE.
    layer : int
        The block whose output it reads.
    label : str
        Its name in tables (the spec's label).
    """

    backbone: Any
    sae: Any
    layer: int
    label: str = ""

    @property
    def positions(self) -> tuple[list[int], list[int]]:
        """The token positions the SAE reads, and the others (see :func:`covered_positions`)."""
        return covered_positions(self.backbone, self.sae, self.layer)


@dataclass
class SourceLeaves:
    """The leaves one forward pass through the SAE path made.

    Attributes
    ----------
    latents : torch.Tensor
        ``[N, Tc, d_sae]`` the source latents ``z'`` at the covered tokens (as edited).
    error : torch.Tensor
        ``[N, Tc, D]`` the reconstruction error ``e`` (as edited).
    uncovered : torch.Tensor
        ``[N, Tu, D]`` the hidden states of the tokens the SAE does not read.
    bias : torch.Tensor
        ``[N, Tc, D]`` ``recon(0)``, the reconstruction of no latents (a constant).
    original : torch.Tensor
        ``[N, Tc, d_sae]`` the unedited latents.
    original_error : torch.Tensor
        ``[N, Tc, D]`` the unedited error.
    """

    latents: torch.Tensor
    error: torch.Tensor
    uncovered: torch.Tensor
    bias: torch.Tensor
    original: torch.Tensor = field(repr=False)
    original_error: torch.Tensor = field(repr=False)


def covered_positions(backbone: Any, sae: Any, layer: int) -> tuple[list[int], list[int]]:
    """Token positions an SAE reads at ``layer`` (by its ``tokens``: ``"patch"``, ``"cls"`` or ``"all"``), and the rest."""
    from cafe_core.geometry import layer_grid

    prefixes = tuple(backbone.prefix_tokens)
    gh, gw = layer_grid(backbone, layer)
    everything = list(range(len(prefixes) + gh * gw))
    tokens = getattr(sae, "tokens", "patch")
    if tokens == "all":
        covered = everything
    elif tokens == "cls":
        covered = [prefixes.index("cls")] if "cls" in prefixes else []
    else:
        covered = everything[len(prefixes) :]
    chosen = set(covered)
    return covered, [p for p in everything if p not in chosen]


def reconstruct(sae: Any, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The SAE's reconstruction of latents ``z [..., d_sae]`` in the scale of hidden states ``h [..., D]``.

    ``decode(z)`` for an SAE that reads ``h`` as it is; for one that normalises its input first (a
    ``normalization`` other than ``"none"``, as cafe-plugin-sae's SAEs record it), the decoded vector mapped
    back with the statistics of ``h`` held constant, so the reconstruction stays affine in ``z``.
    """
    decoded = sae.decode(z)
    kind = getattr(sae, "normalization", "none")
    if kind == "none":
        return decoded
    from cafe_sae.normalization import denormalize, normalize

    with torch.no_grad():
        statistics = normalize(h.detach(), kind, getattr(sae, "input_mean", None), getattr(sae, "input_scalar", None))[1]
    return denormalize(decoded, statistics)


def splice_problem(backbone: Any, sae: Any, layer: int) -> str | None:
    """Why the SAE path cannot be spliced in at ``layer`` of ``backbone`` (``None`` when it can).

    The splice hooks block ``layer`` of ``backbone.model.blocks``, so the tokens the source SAE reads must be
    that block's output: no final norm or pooled token computed after it (the backbone's
    ``trailing_modules(layer)`` is empty) and the ``resid_post`` site.
    """
    blocks = getattr(getattr(backbone, "model", None), "blocks", None)
    if blocks is None or not hasattr(blocks, "__getitem__"):
        return (f"the SAE path needs a ViT whose model has `blocks` (a timm VisionTransformer); "
                f"{type(getattr(backbone, 'model', backbone)).__name__} has none: use a `timm`, `open_clip` or "
                "`hf_vision` backbone")
    if not 0 <= layer < len(blocks):
        return f"source layer {layer} is outside the backbone's blocks 0..{len(blocks) - 1}"
    trailing = getattr(backbone, "trailing_modules", None)
    if callable(trailing) and tuple(trailing(layer)):
        return (f"the tokens of layer {layer} pass through {', '.join(trailing(layer))} after the block, so the "
                "block's output is not what the source SAE reads; choose a source layer without a final norm")
    site = getattr(sae, "site", "resid_post")
    if site not in ("resid_post", "all"):  # "all" is the old meaning of `site` on some hand-built SAEs
        return f"the source SAE reads site {site!r}; the SAE path replaces the output of a block (resid_post)"
    return None


def _assemble(h: torch.Tensor, covered: torch.Tensor, new: torch.Tensor, others: torch.Tensor,
              rest: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(h)
    out = out.index_copy(1, covered, new)
    return out.index_copy(1, others, rest) if len(others) else out


@contextmanager
def sae_path(source: Source, edit: Edit | None = None, requires_grad: bool = True) -> Iterator[list[SourceLeaves]]:
    """Splice the source SAE's path into every forward pass through block ``source.layer``.

    Parameters
    ----------
    source : Source
        The source SAE and its layer.
    edit : callable, optional
        Applied to the detached latents and error of each forward pass before they become leaves (an
        integration path's scaling, an insertion test's masks).
    requires_grad : bool
        Whether the leaves require grad.

    Yields
    ------
    list of SourceLeaves
        One entry appended per forward pass, in order.

    Raises
    ------
    cafe_interlayer.errors.InterlayerError
        If :func:`splice_problem` finds one.
    """
    from .errors import InterlayerError

    problem = splice_problem(source.backbone, source.sae, source.layer)
    if problem:
        raise InterlayerError(problem)
    covered_list, others_list = source.positions
    made: list[SourceLeaves] = []
    sae = source.sae

    def hook(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        h = output.detach()
        covered = torch.as_tensor(covered_list, dtype=torch.long, device=h.device)
        others = torch.as_tensor(others_list, dtype=torch.long, device=h.device)
        read = h.index_select(1, covered)
        with torch.no_grad():
            z = sae.encode(read)
            error = read - reconstruct(sae, z, read)
            bias = reconstruct(sae, torch.zeros_like(z), read)
        original, original_error = z, error
        if edit is not None:
            z, error = edit(z, error)
        z = z.detach().requires_grad_(requires_grad)
        error = error.detach().requires_grad_(requires_grad)
        rest = h.index_select(1, others).requires_grad_(requires_grad)
        with torch.enable_grad():
            new = reconstruct(sae, z, read) + error
            out = _assemble(h, covered, new, others, rest)
        made.append(SourceLeaves(z, error, rest, bias, original, original_error))
        return out

    handle = source.backbone.model.blocks[source.layer].register_forward_hook(hook)
    try:
        yield made
    finally:
        handle.remove()
