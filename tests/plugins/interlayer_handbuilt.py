"""A hand-built two-block model with SAEs at both layers, whose interlayer relevance is known in closed form.

Tokens: the class token is a constant vector ``c``; patch token ``i`` is ``P vec(patch_i)``. Block 0 maps every
token by ``B`` (``h0 = B tok``); block 1 mixes tokens and channels, ``h1[t] = sum_s A[t, s] M h0[s]``. Both are
linear without biases, so with a ReLU SAE at layer 0 (patch tokens) spliced in, a target latent
``z = relu(w . (h1[k] - b_d) + b_e)`` that is active has the gradient ``g_s = A[k, s] M^T w`` at every
spliced token ``s``, and

* latent ``j`` at token ``s``: ``R = z'_sj (W_d^T g_s)_j``,
* error at token ``s``: ``e_s . g_s``; decoder bias: ``sum_s b_h . g_s``; the class token: ``h0[0] . g_0``,
* the target SAE's biases: ``b_e - w . b_d``,

which :func:`expected_relevance` computes with numpy from the parameters alone.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["TwoBlockModel", "expected_relevance", "numpy_target", "make_case"]

IMAGE, PATCH, WIDTH = 4, 2, 3
N_TOKENS = 1 + (IMAGE // PATCH) ** 2


class _Map(nn.Module):
    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__()
        self.matrix = nn.Parameter(matrix.clone(), requires_grad=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.matrix.T


class _Mix(nn.Module):
    def __init__(self, tokens: torch.Tensor, channels: torch.Tensor) -> None:
        super().__init__()
        self.tokens = nn.Parameter(tokens.clone(), requires_grad=False)
        self.channels = nn.Parameter(channels.clone(), requires_grad=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ts,bsd,ed->bte", self.tokens, h, self.channels)


class TwoBlockModel:
    """The backbone of the module's description (``model.blocks`` as a timm ViT has them)."""

    depth = 2
    width = WIDTH
    image_size = (IMAGE, IMAGE)
    patch_size = (PATCH, PATCH)
    grid_size = (IMAGE // PATCH, IMAGE // PATCH)
    prefix_tokens = ("cls",)

    def __init__(self, cls: torch.Tensor, embed: torch.Tensor, block0: torch.Tensor, mix: torch.Tensor,
                 channels: torch.Tensor) -> None:
        self.model = nn.Module()
        self.model.cls = nn.Parameter(cls.clone(), requires_grad=False)
        self.model.embed = nn.Parameter(embed.clone(), requires_grad=False)
        self.model.blocks = nn.ModuleList([_Map(block0), _Mix(mix, channels)])

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        return torch.stack([torch.as_tensor(image, dtype=torch.float64) for image in images])

    def forward_to(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        b = x.shape[0]
        g = IMAGE // PATCH
        patches = x.reshape(b, 3, g, PATCH, g, PATCH).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, -1)
        tokens = torch.cat([self.model.cls.expand(b, 1, -1), patches @ self.model.embed.T], dim=1)
        for block in self.model.blocks[: layer + 1]:
            tokens = block(tokens)
        return tokens


def make_case(seed: int = 0, d_sae: int = 6):
    """The model, a source SAE at layer 0 (patch tokens), a target SAE at layer 1 and images, all float64.

    The target SAE's encoder bias is large, so that its latents stay active along the whole integration path.
    """
    from cafe_sae import ReluSAE

    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    model = TwoBlockModel(rand(WIDTH), rand(WIDTH, 3 * PATCH * PATCH) / 3, rand(WIDTH, WIDTH),
                          rand(N_TOKENS, N_TOKENS) / 2, rand(WIDTH, WIDTH))
    source = ReluSAE.random_init(WIDTH, d_sae, seed=seed, layer=0, tokens="patch").double().requires_grad_(False)
    target = ReluSAE.random_init(WIDTH, d_sae, seed=seed + 1, layer=1, tokens="patch").double().requires_grad_(False)
    with torch.no_grad():
        source.b_e.copy_(0.5 * rand(d_sae).abs())
        source.b_d.copy_(0.3 * rand(WIDTH))
        source.b_h.copy_(0.3 * rand(WIDTH))
        target.b_e.copy_(20 + rand(d_sae).abs())
        target.b_d.copy_(0.3 * rand(WIDTH))
    images = torch.rand(3, 3, IMAGE, IMAGE, generator=g, dtype=torch.float64)
    return model, source, target, images


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float64)


def numpy_hidden(model: TwoBlockModel, image: np.ndarray) -> np.ndarray:
    """``h0 [T, D]`` of one image ``[3, H, W]``."""
    g = IMAGE // PATCH
    patches = image.reshape(3, g, PATCH, g, PATCH).transpose(1, 3, 0, 2, 4).reshape(g * g, -1)
    tokens = np.concatenate([_np(model.model.cls)[None], patches @ _np(model.model.embed).T])
    return tokens @ _np(model.model.blocks[0].matrix).T


def numpy_source(source, h0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``z' [P, d_sae]`` and ``e [P, D]`` at the patch tokens of ``h0``."""
    patches = h0[1:]
    z = np.maximum((patches - _np(source.b_d)) @ _np(source.W_e).T + _np(source.b_e), 0)
    return z, patches - (z @ _np(source.W_d).T + _np(source.b_h))


def numpy_target(model, source, target, h0_patches_hat: np.ndarray, h0_cls: np.ndarray, latent: int,
                 position: int) -> float:
    """The target latent when the patch tokens of layer 0 are ``h0_patches_hat [P, D]``."""
    h0 = np.concatenate([h0_cls[None], h0_patches_hat])
    h1 = _np(model.model.blocks[1].tokens) @ h0 @ _np(model.model.blocks[1].channels).T
    w = _np(target.W_e)[latent]
    return float(max(w @ (h1[position] - _np(target.b_d)) + float(target.b_e[latent]), 0.0))


def expected_relevance(model, source, target, image: np.ndarray, latent: int, position: int) -> dict[str, Any]:
    """Closed-form relevance of the target latent over the source latents and the other nodes (numpy)."""
    h0 = numpy_hidden(model, image)
    z, e = numpy_source(source, h0)
    w = _np(target.W_e)[latent]
    grads = _np(model.model.blocks[1].tokens)[position][:, None] * (_np(model.model.blocks[1].channels).T @ w)[None]
    value = numpy_target(model, source, target, z @ _np(source.W_d).T + _np(source.b_h) + e, h0[0], latent, position)
    assert value > 0, "the hand-built target must be active"
    g_patches = grads[1:]
    return {
        "value": value,
        "latents": z * (g_patches @ _np(source.W_d)),
        "error": (e * g_patches).sum(1),
        "bias": float((_np(source.b_h)[None] * g_patches).sum()),
        "uncovered": float(h0[0] @ grads[0]),
        "absorbed": float(target.b_e[latent]) - float(w @ _np(target.b_d)),
        "z": z,
        "e": e,
        "h0": h0,
    }
