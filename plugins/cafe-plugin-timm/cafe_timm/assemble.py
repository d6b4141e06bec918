"""Building the timm VisionTransformer that computes what another library's ViT computes, and filling it.

The ``open_clip`` and ``hf_vision`` backbones describe the other library's model as a :class:`ViTLayout`,
build the matching timm model with :func:`build_vit` and load the renamed weights with :func:`load_exact`;
the rest of cafe (and the LRP rules for timm's modules) then sees an ordinary timm ViT.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from .errors import TimmBackboneError

__all__ = ["ViTLayout", "build_vit", "load_exact"]

_SHOWN = 5


@dataclass(frozen=True)
class ViTLayout:
    """What fixes a ViT's computation up to its weights.

    Attributes
    ----------
    image_size, patch_size : tuple of int
        ``(H, W)`` input size and ``(ph, pw)`` patch size.
    width, depth, heads, mlp_hidden : int
        Token width, number of blocks, attention heads and hidden units of the MLPs.
    act : str
        timm name of the MLP activation: ``"gelu"``, ``"gelu_tanh"``, ``"quick_gelu"``...
    eps : float
        Epsilon of every LayerNorm.
    qkv_bias, proj_bias, patch_bias : bool
        Biases of the q/k/v projection, of the attention output projection and of the patch embedding.
    layer_scale : bool
        Per-channel scales on both residual branches (DINOv2).
    class_token : bool
        A class token.
    reg_tokens : int
        Register tokens, between the class token and the patches.
    no_embed_class : bool
        The position embedding covers the patches only (prefix tokens carry their own).
    pre_norm : bool
        A LayerNorm after the embeddings (CLIP's ``ln_pre``).
    final_norm : bool
        A LayerNorm on the tokens after the last block.
    global_pool : str
        ``"token"``, or ``"map"`` for an attention-pool head (SigLIP).
    gated_mlp : bool
        The MLP is a SwiGLU (``act`` is then the gate's activation).
    """

    image_size: tuple[int, int]
    patch_size: tuple[int, int]
    width: int
    depth: int
    heads: int
    mlp_hidden: int
    act: str
    eps: float
    qkv_bias: bool = True
    proj_bias: bool = True
    patch_bias: bool = True
    layer_scale: bool = False
    class_token: bool = True
    reg_tokens: int = 0
    no_embed_class: bool = False
    pre_norm: bool = False
    final_norm: bool = True
    global_pool: str = "token"
    gated_mlp: bool = False


def build_vit(layout: ViTLayout) -> nn.Module:
    """An uninitialised timm ``VisionTransformer`` of this layout, without classifier, in eval mode."""
    from timm.layers import LayerNorm, SwiGLUPacked
    from timm.models.vision_transformer import VisionTransformer

    # timm sizes the MLP as int(width * mlp_ratio): half a unit more makes that exactly the hidden size.
    hidden = layout.mlp_hidden * (2 if layout.gated_mlp else 1)
    extra = {"mlp_layer": SwiGLUPacked} if layout.gated_mlp else {}
    net = VisionTransformer(
        img_size=layout.image_size,
        patch_size=layout.patch_size,
        num_classes=0,
        global_pool=layout.global_pool,
        embed_dim=layout.width,
        depth=layout.depth,
        num_heads=layout.heads,
        mlp_ratio=(hidden + 0.5) / layout.width,
        qkv_bias=layout.qkv_bias,
        proj_bias=layout.proj_bias,
        init_values=1.0 if layout.layer_scale else None,
        class_token=layout.class_token,
        reg_tokens=layout.reg_tokens,
        no_embed_class=layout.no_embed_class,
        pre_norm=layout.pre_norm,
        final_norm=layout.final_norm,
        norm_layer=functools.partial(LayerNorm, eps=layout.eps),
        act_layer=layout.act,
        weight_init="skip",
        **extra,
    )
    if layout.patch_bias != (net.patch_embed.proj.bias is not None):
        # timm ties the patch bias to pre_norm (CLIP has both or neither); rebuild the projection otherwise.
        old = net.patch_embed.proj
        net.patch_embed.proj = nn.Conv2d(
            old.in_channels, old.out_channels, old.kernel_size, stride=old.stride, bias=layout.patch_bias
        )
    return net.eval()


def load_exact(net: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``net``: every key present, none left over, every shape equal.

    Raises
    ------
    TimmBackboneError
        Naming ``source`` and a few of the keys that do not fit: the layout read from the other library's
        model missed a feature of it.
    """
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
              for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = [f"{label} {_few(keys)}" for label, keys in
                (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)) if keys]
    if problems:
        raise TimmBackboneError(
            f"the weights of {source} do not fit the timm ViT built from its configuration ({'; '.join(problems)}); "
            "the model has a feature this backbone does not convert: use a variant without it, or save the model "
            "as the timm ViT of its architecture and read it with the 'timm' backbone"
        )
    with torch.no_grad():
        net.load_state_dict({k: v.detach().to(expected[k].dtype) for k, v in state.items()}, strict=True)


def _few(items: list[str]) -> str:
    return "[" + ", ".join(items[:_SHOWN]) + (", ..." if len(items) > _SHOWN else "") + "]"
