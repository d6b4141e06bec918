"""Hand-built backbones and SAEs whose latents are known in closed form, plus a tiny real ViT.

``patch_sum_backbone`` makes the token of patch ``i`` equal to ``s_i * e_i`` where ``s_i`` is the sum of the
patch's pixels over channels, and the class token the sum of all patch tokens, i.e. the vector of patch sums.
A :class:`LinearReluSAE` latent with encoder row ``w`` and no bias then reads

* at the class token: ``z = relu(sum_i w_i * s_i)``,
* at the patch token ``i``: ``z = relu(w_i * s_i)``,

so every attribution and every insertion/deletion curve can be derived by hand.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "CountingBackbone",
    "LinearPatchBackbone",
    "LinearReluSAE",
    "TinyTimmViT",
    "numpy_gaussian_blur",
    "numpy_patch_sums",
    "patch_sum_backbone",
]


class LinearPatchBackbone:
    """One block; the token of patch ``i`` is ``maps[i] @ vec(patch_i)``, the class token their sum.

    Parameters
    ----------
    maps : torch.Tensor
        ``[gh * gw, D, C * ph * pw]``: a linear map per patch position (pixels flattened channel-major).
    image_size, patch_size : tuple of int
        ``(H, W)`` and ``(ph, pw)``.
    cls : bool
        Prepend a class token.
    """

    depth = 1

    def __init__(
        self, maps: torch.Tensor, image_size: tuple[int, int], patch_size: tuple[int, int], cls: bool = True
    ) -> None:
        self.image_size = tuple(image_size)
        self.patch_size = tuple(patch_size)
        self.grid_size = (image_size[0] // patch_size[0], image_size[1] // patch_size[1])
        self.prefix_tokens = ("cls",) if cls else ()
        self.model = nn.Module()
        self.model.maps = nn.Parameter(maps.clone())
        self.width = maps.shape[1]
        self.mean = torch.zeros(3)
        self.std = torch.ones(3)

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        return torch.stack([torch.as_tensor(image, dtype=torch.float32) for image in images])

    def forward_to(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        if layer != 0:
            raise ValueError(f"this backbone has one block, got layer {layer}")
        b, c, _, _ = x.shape
        (gh, gw), (ph, pw) = self.grid_size, self.patch_size
        patches = x.reshape(b, c, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * ph * pw)
        tokens = torch.einsum("ndk,bnk->bnd", self.model.maps, patches)
        if self.prefix_tokens:
            tokens = torch.cat([tokens.sum(dim=1, keepdim=True), tokens], dim=1)
        return tokens


def patch_sum_backbone(
    image_size: tuple[int, int] = (8, 8), patch_size: tuple[int, int] = (2, 2), cls: bool = True
) -> LinearPatchBackbone:
    """The backbone whose patch token ``i`` is ``s_i * e_i`` (``s_i`` the patch's pixel sum), width ``gh * gw``."""
    n = (image_size[0] // patch_size[0]) * (image_size[1] // patch_size[1])
    maps = torch.eye(n)[:, :, None].expand(n, n, 3 * patch_size[0] * patch_size[1])
    return LinearPatchBackbone(maps, image_size, patch_size, cls=cls)


class CountingBackbone:
    """Wraps a backbone and records the batch size of every ``forward_to`` call."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def forward_to(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return self.inner.forward_to(x, layer)


class LinearReluSAE:
    """``z = relu(h @ W_enc.T + b_enc)``, ``decode(z) = z @ W_dec + b_dec``.

    Parameters
    ----------
    w_enc : torch.Tensor
        ``[d_sae, d_in]``.
    b_enc : torch.Tensor, optional
        ``[d_sae]``; zeros by default.
    """

    site = "all"

    def __init__(self, w_enc: torch.Tensor, b_enc: torch.Tensor | None = None, layer: int | None = 0) -> None:
        self.w_enc = torch.as_tensor(w_enc, dtype=torch.float32)
        self.d_sae, self.d_in = self.w_enc.shape
        self.b_enc = torch.zeros(self.d_sae) if b_enc is None else torch.as_tensor(b_enc, dtype=torch.float32)
        self.w_dec = self.w_enc.clone()
        self.b_dec = torch.zeros(self.d_in)
        self.layer = layer

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(h @ self.w_enc.T + self.b_enc)

    def encode_latents(self, h: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return torch.relu((h * self.w_enc[latents]).sum(dim=-1) + self.b_enc[latents])

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.w_dec + self.b_dec


class TinyTimmViT:
    """A randomly initialised two-block timm ViT on 32x32 images with 8x8 patches and a class token."""

    def __init__(self, seed: int = 0) -> None:
        import timm

        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.model = timm.create_model(
                "vit_tiny_patch16_224",
                pretrained=False,
                img_size=32,
                patch_size=8,
                depth=2,
                embed_dim=32,
                num_heads=2,
            ).eval()
        self.depth = 2
        self.width = 32
        self.image_size = (32, 32)
        self.patch_size = (8, 8)
        self.grid_size = (4, 4)
        self.prefix_tokens = ("cls",)
        self.mean = torch.full((3,), 0.5)
        self.std = torch.full((3,), 0.5)

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        x = torch.stack([torch.as_tensor(image, dtype=torch.float32) for image in images])
        return (x - self.mean[:, None, None]) / self.std[:, None, None]

    def forward_to(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        if not 0 <= layer < self.depth:
            raise ValueError(f"layer must be in 0..{self.depth - 1}, got {layer}")
        m = self.model
        h = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
        for block in m.blocks[: layer + 1]:
            h = block(h)
        return h


def numpy_patch_sums(x: np.ndarray, patch_size: tuple[int, int]) -> np.ndarray:
    """Sum of pixels over channels within each patch: ``[B, C, H, W]`` -> ``[B, gh * gw]`` (row-major)."""
    b, c, h, w = x.shape
    ph, pw = patch_size
    out = np.zeros((b, h // ph, w // pw))
    for r in range(h // ph):
        for q in range(w // pw):
            out[:, r, q] = x[:, :, r * ph : (r + 1) * ph, q * pw : (q + 1) * pw].sum(axis=(1, 2, 3))
    return out.reshape(b, -1)


def numpy_gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of ``[B, C, H, W]``: kernel truncated at ``ceil(3 sigma)`` (at most
    ``min(H, W) - 1``), normalised, image extended by reflection without repeating the edge pixel."""
    h, w = x.shape[-2:]
    radius = max(0, min(int(np.ceil(3 * sigma)), min(h, w) - 1))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(x, ((0, 0), (0, 0), (0, 0), (radius, radius)), mode="reflect")
    rows = np.zeros_like(x, dtype=np.float64)
    for j in range(w):
        rows[..., j] = (padded[..., j : j + 2 * radius + 1] * kernel).sum(axis=-1)
    padded = np.pad(rows, ((0, 0), (0, 0), (radius, radius), (0, 0)), mode="reflect")
    out = np.zeros_like(rows)
    for i in range(h):
        out[..., i, :] = (padded[..., i : i + 2 * radius + 1, :] * kernel[:, None]).sum(axis=-2)
    return out


def patch_sum_images(b: int, seed: int = 0, low: float = 0.0) -> torch.Tensor:
    """``b`` seeded images ``[b, 3, 8, 8]`` for :func:`patch_sum_backbone`, values in ``[low, 1)``."""
    return low + torch.rand(b, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * (1 - low)


def positive_patch_weights(seed: int, d_sae: int = 3, n_patches: int = 16) -> np.ndarray:
    """Seeded per-patch weights in ``[0.1, 1)`` for a :class:`LinearReluSAE` over the 16 patches."""
    return np.random.default_rng(seed).uniform(0.1, 1.0, size=(d_sae, n_patches))
