"""A timm VisionTransformer seen as a :class:`cafe_core.protocols.Backbone`."""

from __future__ import annotations

import numbers
import pathlib
import warnings
from typing import Any

import torch

from .block_rows import block_rows, plain_block
from .checkpoint import load_checkpoint
from .common import TimmModel
from .errors import TimmBackboneError
from .models import create_vit
from .preprocess import ImagePreprocessor

__all__ = ["TimmViT"]


class TimmViT(TimmModel):
    """Any timm VisionTransformer, read at the output of one block.

    The token sequence is ``[prefix tokens..., patch tokens...]``: the class token (if any), a distillation
    token (DeiT distilled models), register tokens, and with ``pool_token`` the attention-pooled token,
    followed by ``gh * gw`` patch tokens in row-major order. The model is put in eval mode; its parameters
    keep their ``requires_grad``.

    Parameters
    ----------
    model : str
        timm model name, e.g. ``"vit_small_patch16_224"``.
    pretrained : bool
        Let timm fetch the pretrained weights (network access or a filled hub cache).
    checkpoint : path-like, optional
        Local state dict (``.safetensors``, ``.pth``, ``.pt``, ``.bin``) to load; exclusive with ``pretrained``.
        timm's conversion applies where the names differ (OpenAI/open_clip CLIP and DINOv2 torch-hub layouts).
    img_size : int, optional
        Square input size (default: the model's own).
    model_kwargs : dict, optional
        Further keyword arguments of ``timm.create_model``.
    final_norm : {"none", "last", "all"}
        Where the model's final norm (timm's ``norm``) is applied to the tokens: nowhere (the residual stream,
        the default), to the output of the last block only (Hugging Face's ``last_hidden_state``), or to the
        output of every block (``forward_intermediates(norm=True)``, DINOv2's ``get_intermediate_layers``).
    pool_token : bool
        Add the output of the attention-pool head (``global_pool="map"``, SigLIP's image embedding before any
        projection) as a prefix token named ``"pool"``: the head applied to the final norm of the layer's
        tokens. It is the model's pooled output at the last block only.

    Attributes
    ----------
    model : timm.models.vision_transformer.VisionTransformer
        The module, in eval mode.
    model_name : str
        The name it was created from.
    depth, width : int
        Number of blocks and token width.
    image_size, patch_size, grid_size : tuple of int
        ``(H, W)`` input size, ``(ph, pw)`` input pixels per patch token (the CNN stride for hybrid models)
        and ``(gh, gw)`` patch tokens per column and row.
    prefix_tokens : tuple of str
        ``("cls",)``, ``("cls", "reg0", ...)``, ``("reg0", ...)``, ``("pool",)``, ``()``...

    Raises
    ------
    TimmBackboneError
        For a model that is not a VisionTransformer, weights that cannot be loaded, an image size that is
        not a multiple of the patch size, or a ``final_norm`` or ``pool_token`` the model has no module for.
        The settings themselves are checked by :class:`cafe_timm.params.TimmParams`.
    """

    def __init__(
        self,
        model: str,
        *,
        pretrained: bool = False,
        checkpoint: pathlib.Path | str | None = None,
        img_size: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
        final_norm: str = "none",
        pool_token: bool = False,
    ) -> None:
        model_kwargs = dict(model_kwargs or {})
        net = create_vit(model, pretrained=pretrained, img_size=img_size, model_kwargs=model_kwargs)
        if checkpoint is not None:
            load_checkpoint(net, checkpoint, model)
        self.checkpoint = checkpoint
        self._adopt(net, model, final_norm=final_norm, pool_token=pool_token)
        self._preprocess = ImagePreprocessor.for_timm_model(net, self.image_size)

    def _adopt(self, net: torch.nn.Module, name: str, *, final_norm: str = "none", pool_token: bool = False) -> None:
        """Take ``net`` as the model: eval mode, geometry, and how the tokens are read out."""
        net.eval()
        self.model = net
        self.model_name = name
        self.depth = len(net.blocks)
        self.width = int(net.embed_dim)
        self.image_size = _pair(net.patch_embed.img_size)
        self.grid_size = _pair(net.patch_embed.grid_size)
        self.patch_size = _pixel_patch_size(net.patch_embed, self.image_size, self.grid_size, name)
        _check_read_out(net, name, final_norm, pool_token)
        self.final_norm = final_norm
        self.pool_token = bool(pool_token)
        self._model_prefix = _prefix_names(net)
        self.prefix_tokens = self._model_prefix + (("pool",) if pool_token else ())
        self._rows_agree: dict[int, bool] = {}  # per layer: block_rows checked against the whole block

    # Geometry -------------------------------------------------------------------------------------------

    @property
    def num_prefix_tokens(self) -> int:
        """Number of tokens before the patch tokens."""
        return len(self.prefix_tokens)

    @property
    def num_tokens(self) -> int:
        """Length ``T`` of the token sequence."""
        return self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1]

    def token_to_patch(self, index: int) -> tuple[int, int] | None:
        """``(row, col)`` of the patch at token ``index``, or None for a prefix token.

        Raises
        ------
        TimmBackboneError
            If ``index`` is not in ``[0, num_tokens)``.
        """
        index = self._check_index(index, self.num_tokens, "token index")
        if index < self.num_prefix_tokens:
            return None
        return divmod(index - self.num_prefix_tokens, self.grid_size[1])

    def patch_to_token(self, row: int, col: int) -> int:
        """Token index of the patch at ``(row, col)`` of the ``grid_size`` grid.

        Raises
        ------
        TimmBackboneError
            If the patch is outside the grid.
        """
        row = self._check_index(row, self.grid_size[0], "patch row")
        col = self._check_index(col, self.grid_size[1], "patch column")
        return self.num_prefix_tokens + row * self.grid_size[1] + col

    def forward_to(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """Token activations ``[B, T, D]`` at the output of block ``layer``.

        Runs the patch embedding, position embedding, ``norm_pre`` and blocks ``0..layer`` only: never the
        later blocks or the classifier. The final norm and the attention-pool head run only as
        ``final_norm`` and ``pool_token`` ask (see :meth:`trailing_modules`). Gradients flow if ``x`` requires
        them.

        Raises
        ------
        TimmBackboneError
            If ``layer`` is not an int in ``[0, depth)`` or ``x`` is not ``[B, 3, H, W]`` at ``image_size``.
        """
        layer = self._check_index(layer, self.depth, "layer")
        self._check_input(x)
        return self._read_out(self.model.blocks[layer](self._block_input(x, layer)), layer)

    def forward_to_tokens(self, x: torch.Tensor, layer: int, positions: torch.Tensor) -> torch.Tensor:
        """``forward_to(x, layer)[:, positions]``, with block ``layer`` run at those tokens only where it can.

        Block ``layer`` needs all of its input tokens but gives its output at ``positions`` from their own
        attention rows and MLP, which is most of a block's cost left out (see :mod:`cafe_timm.block_rows`).
        That applies to timm's own ``Block`` with ``Attention``, unpatched and unhooked, without ``pool_token``;
        otherwise the whole block runs. The first call per layer also runs the whole block and compares: where
        the two differ by more than rounding, a warning says so and the whole block runs from then on.

        Parameters
        ----------
        x : torch.Tensor
            Model inputs ``[B, 3, H, W]``.
        layer : int
            The block.
        positions : torch.Tensor
            ``[P]`` token indices.

        Returns
        -------
        torch.Tensor
            ``[B, P, D]``.
        """
        layer = self._check_index(layer, self.depth, "layer")
        self._check_input(x)
        positions = torch.as_tensor(positions, dtype=torch.long, device=x.device)
        block = self.model.blocks[layer]
        if self.pool_token or not plain_block(block) or self._rows_agree.get(layer) is False:
            return self.forward_to(x, layer)[:, positions]
        h = self._block_input(x, layer)
        out = block_rows(block, h, positions)
        out = self.model.norm(out) if self._normed(layer) else out
        if layer not in self._rows_agree:
            self._rows_agree[layer] = self._check_rows(out, self._read_out(block(h), layer)[:, positions], layer)
        return out

    def _block_input(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """The tokens entering block ``layer``: embeddings, ``norm_pre`` and blocks ``0..layer - 1``."""
        net = self.model
        h = net.norm_pre(net.patch_drop(net._pos_embed(net.patch_embed(x))))
        for block in net.blocks[:layer]:
            h = block(h)
        return h

    def _check_rows(self, rows: torch.Tensor, whole: torch.Tensor, layer: int) -> bool:
        scale = float(whole.detach().abs().max()) or 1.0
        error = float((rows - whole).detach().abs().max())
        if error <= _rounding(rows.device) * scale:
            return True
        warnings.warn(
            f"block {layer} of {self.model_name} computed at a few tokens differs from the whole block by "
            f"{error:.3g} (largest value {scale:.3g}); this timm version's block is not what cafe_timm.block_rows "
            "recomputes, so the whole block runs from now on (correct, only slower)",
            RuntimeWarning,
            stacklevel=3,
        )
        return False

    def trailing_modules(self, layer: int) -> tuple[str, ...]:
        """Names of the model's submodules that :meth:`forward_to` runs after block ``layer``.

        ``("norm",)`` where the final norm applies to this layer, ``("norm", "attn_pool")`` with
        ``pool_token``, otherwise ``()``. Attributors that patch the modules which run (LRP rules) read it.
        """
        names = ("norm",) if self._normed(layer) or self.pool_token else ()
        return names + (("attn_pool",) if self.pool_token else ())

    def _normed(self, layer: int) -> bool:
        return self.final_norm == "all" or (self.final_norm == "last" and layer == self.depth - 1)

    def _read_out(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        net = self.model
        normed = net.norm(h) if self._normed(layer) or self.pool_token else None
        tokens = normed if self._normed(layer) else h
        if not self.pool_token:
            return tokens
        n = len(self._model_prefix)
        # As timm's VisionTransformer.pool: the head reads the patch tokens only, unless told otherwise.
        pooled = net.attn_pool(normed if getattr(net, "pool_include_prefix", False) else normed[:, n:])
        return torch.cat([tokens[:, :n], pooled[:, None], tokens[:, n:]], dim=1)

    # Checks ----------------------------------------------------------------------------------------------

    @staticmethod
    def _check_index(value: Any, size: int, what: str) -> int:
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TimmBackboneError(f"{what} must be an int in [0, {size - 1}], got {value!r}")
        if not 0 <= int(value) < size:
            raise TimmBackboneError(f"{what} {value} is out of range; valid values are 0..{size - 1}")
        return int(value)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.model_name!r}, depth={self.depth}, width={self.width}, "
            f"image_size={self.image_size}, patch_size={self.patch_size}, prefix_tokens={self.prefix_tokens})"
        )


def _rounding(device: torch.device) -> float:
    """How far two orders of the same float32 sums may differ, relative to the largest value: 1e-4, or 8 ulp
    of the lower precision when autocast is on."""
    if torch.is_autocast_enabled(device.type):
        return max(1e-4, 8 * torch.finfo(torch.get_autocast_dtype(device.type)).eps)
    return 1e-4


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, numbers.Integral):
        return (int(value), int(value))
    first, second = value
    return (int(first), int(second))


def _pixel_patch_size(
    embed: torch.nn.Module, image_size: tuple[int, int], grid_size: tuple[int, int], model: str
) -> tuple[int, int]:
    from timm.layers import PatchEmbed

    if isinstance(embed, PatchEmbed):
        patch = _pair(embed.patch_size)
        if all(s == g * p for s, g, p in zip(image_size, grid_size, patch)):
            return patch
        raise TimmBackboneError(
            f"image size {image_size} of {model!r} is not a multiple of its patch size {patch}, so the patches "
            "would not tile the image; set img_size to a multiple of the patch size"
        )
    # Hybrid stems (a CNN before the tokens): one token covers image_size / grid_size pixels.
    if all(s % g == 0 for s, g in zip(image_size, grid_size)):
        return (image_size[0] // grid_size[0], image_size[1] // grid_size[1])
    raise TimmBackboneError(
        f"image size {image_size} of {model!r} is not a multiple of its token grid {grid_size}, so the tokens "
        "would not tile the image; set img_size to a multiple of the stem's stride"
    )


def _prefix_names(net: torch.nn.Module) -> tuple[str, ...]:
    names: list[str] = []
    if getattr(net, "cls_token", None) is not None:
        names.append("cls")
    if getattr(net, "dist_token", None) is not None:
        names.append("dist")
    reg = getattr(net, "reg_token", None)
    if reg is not None:
        names += [f"reg{i}" for i in range(reg.shape[1])]
    expected = int(getattr(net, "num_prefix_tokens", len(names)))
    if len(names) != expected:
        raise TimmBackboneError(
            f"{type(net).__name__} has {expected} prefix tokens but only {names} could be named; this variant "
            "orders its tokens differently from timm's VisionTransformer and is not supported"
        )
    return tuple(names)


def _check_read_out(net: torch.nn.Module, name: str, final_norm: str, pool_token: bool) -> None:
    from timm.layers import AttentionPoolLatent

    has_norm = not isinstance(net.norm, torch.nn.Identity)
    if final_norm != "none" and not has_norm:
        raise TimmBackboneError(
            f"final_norm={final_norm!r} asks for the final norm of {name!r}, but its tokens have none (its norm "
            "is applied after pooling, as fc_norm); use final_norm='none'"
        )
    if not pool_token:
        return
    pool = getattr(net, "attn_pool", None)
    if not isinstance(pool, AttentionPoolLatent) or pool.latent_len != 1 or pool.pool != "token":
        found = "no attention-pool head" if pool is None else f"the head {type(pool).__name__}"
        if isinstance(pool, AttentionPoolLatent):
            found += f" with {pool.latent_len} latent queries pooled by {pool.pool!r}"
        raise TimmBackboneError(
            f"pool_token=True reads the attention-pool head, but {name!r} has {found}; it needs "
            "global_pool='map' (SigLIP models) with one latent query. Read the class token instead, or set "
            "pool_token=False"
        )
    if not has_norm:
        raise TimmBackboneError(f"pool_token=True needs the final norm before the head, but {name!r} has none")
