"""A timm ViT block's output at a few tokens only: the rows nobody reads skip their attention output and MLP.

A latent read at token ``k`` of block ``L`` needs every token of block ``L``'s input (the keys and values of
its attention) but the output of block ``L`` at ``k`` alone: its query, attention row, projection and MLP.
For the last block a curve or an occlusion forwards, that skips most of the block's matrix products.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["block_rows", "plain_block"]


def plain_block(block: nn.Module) -> bool:
    """Whether ``block`` is timm's own ``Block`` with timm's ``Attention``, unpatched, unhooked, in eval mode.

    Only such a block is recomputed row by row; anything else (another block class, a patched forward, a
    hook that must see the whole block) runs whole.
    """
    from timm.layers import Attention
    from timm.models.vision_transformer import Block

    if type(block) is not Block or type(block.attn) is not Attention or block.training:
        return False
    for module in block.modules():
        if "forward" in vars(module) or module._forward_hooks or module._forward_pre_hooks:
            return False
    return not (nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks)


def block_rows(block: nn.Module, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``block(x)[:, rows]`` for a :func:`plain_block`, computing the attention output and MLP at ``rows`` only.

    Parameters
    ----------
    block : timm.models.vision_transformer.Block
        A block for which :func:`plain_block` holds.
    x : torch.Tensor
        The block's input ``[B, T, D]``.
    rows : torch.Tensor
        ``[P]`` token indices.

    Returns
    -------
    torch.Tensor
        ``[B, P, D]``, equal to the whole block's output at those tokens up to floating-point rounding.
    """
    attn = block.attn
    normed = block.norm1(x)
    batch, tokens, _ = normed.shape
    gate = attn.gate(normed[:, rows]).sigmoid() if getattr(attn, "gate", None) is not None else None
    qkv = attn.qkv(normed).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q[:, :, rows]), attn.k_norm(k)
    # Matrix products rather than the fused kernel, whose CPU version splits a few query rows over threads
    # differently for each thread count: results would then depend on where a run executes.
    out = (q * attn.scale @ k.transpose(-2, -1)).softmax(dim=-1) @ v
    out = attn.norm(out.transpose(1, 2).reshape(batch, len(rows), -1))
    if gate is not None:
        out = out * gate
    out = attn.proj_drop(attn.proj(out))
    h = x[:, rows] + block.drop_path1(block.ls1(out))
    return h + block.drop_path2(block.ls2(block.mlp(block.norm2(h))))
