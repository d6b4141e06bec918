"""The vision tower of an open_clip model as a timm VisionTransformer with the same weights.

open_clip's own ``VisionTransformer`` (OpenAI CLIP, LAION, DataComp, DFN...) is described as a
:class:`~cafe_timm.assemble.ViTLayout` and its weights renamed: ``conv1`` is the patch embedding,
``class_embedding`` and ``positional_embedding`` the class token and position embedding, ``ln_pre`` the norm
before the blocks, each ``ResidualAttentionBlock``'s ``nn.MultiheadAttention`` (fused ``in_proj``) timm's
``Attention`` (fused ``qkv``), ``ls_1``/``ls_2`` the layer scales, ``c_fc``/``c_proj`` the MLP and ``ln_post``
the final norm. A tower that open_clip builds from timm (SigLIP, ``timm_model_name`` configs) already holds a
timm ``VisionTransformer``: its ``trunk`` is taken as it is.
"""

from __future__ import annotations

from torch import nn

from .assemble import ViTLayout, build_vit, load_exact
from .errors import TimmBackboneError

__all__ = ["vit_from_open_clip"]

_RENAMES = (
    ("conv1.", "patch_embed.proj."),
    ("ln_pre.", "norm_pre."),
    ("ln_post.", "norm."),
    ("transformer.resblocks.", "blocks."),
    (".ln_1.", ".norm1."),
    (".ln_2.", ".norm2."),
    (".attn.in_proj_weight", ".attn.qkv.weight"),
    (".attn.in_proj_bias", ".attn.qkv.bias"),
    (".attn.out_proj.", ".attn.proj."),
    (".ls_1.", ".ls1."),
    (".ls_2.", ".ls2."),
    (".mlp.c_fc.", ".mlp.fc1."),
    (".mlp.c_proj.", ".mlp.fc2."),
)
# The projection and pooling heads: never part of a layer's tokens.
_HEAD_KEYS = ("proj", "attn_pool.", "attn_pool_contrastive.")


def vit_from_open_clip(visual: nn.Module, name: str) -> nn.Module:
    """A timm ``VisionTransformer`` computing the tokens of open_clip's vision tower ``visual``.

    Parameters
    ----------
    visual : torch.nn.Module
        ``model.visual`` of an open_clip model.
    name : str
        The model's name, for messages.

    Raises
    ------
    TimmBackboneError
        For a tower that is not a ViT (ModifiedResNet, a timm model of another family) or a ViT with a block
        feature timm's ViT does not have (the custom blocks' scaled-cosine attention, head scales, inner
        norms...).
    """
    from open_clip.timm_model import TimmModel
    from open_clip.transformer import VisionTransformer
    from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer

    if isinstance(visual, TimmModel):
        if isinstance(visual.trunk, TimmVisionTransformer):
            return visual.trunk.eval()
        raise TimmBackboneError(
            f"the vision tower of open_clip model {name!r} is a timm {type(visual.trunk).__name__}, not a "
            "VisionTransformer; cafe reads ViT towers only"
        )
    if not isinstance(visual, VisionTransformer):
        raise TimmBackboneError(
            f"the vision tower of open_clip model {name!r} is a {type(visual).__name__}, not a ViT; cafe reads "
            "ViT towers only (for a ResNet CLIP there is no backbone yet)"
        )
    layout = _layout(visual, name)
    net = build_vit(layout)
    if isinstance(visual.ln_pre, nn.Identity):
        net.norm_pre = nn.Identity()
    load_exact(net, _renamed(visual, layout.final_norm), f"open_clip model {name!r}")
    return net


def _layout(visual: nn.Module, name: str) -> ViTLayout:
    from open_clip.transformer import LayerScale, QuickGELU, ResidualAttentionBlock

    blocks = list(visual.transformer.resblocks)
    odd = sorted({type(b).__name__ for b in blocks if type(b) is not ResidualAttentionBlock})
    if odd:
        raise TimmBackboneError(
            f"open_clip model {name!r} uses {', '.join(odd)} (qk-norm, scaled cosine attention, head scales or "
            "extra norms), which has no timm equivalent here; use a model with standard blocks"
        )
    first = blocks[0]
    attn, act = first.attn, first.mlp.gelu
    if attn.bias_k is not None or attn.add_zero_attn or not attn._qkv_same_embed_dim:
        raise TimmBackboneError(f"open_clip model {name!r} has an attention with extra key/value biases or dims")
    if isinstance(act, QuickGELU):
        act_name = "quick_gelu"
    elif isinstance(act, nn.GELU):
        act_name = "gelu_tanh" if act.approximate == "tanh" else "gelu"
    else:
        raise TimmBackboneError(f"open_clip model {name!r} has the MLP activation {type(act).__name__}")
    pooled_norm = visual.attn_pool is None and not visual.final_ln_after_pool
    return ViTLayout(
        image_size=tuple(visual.image_size),
        patch_size=tuple(visual.patch_size),
        width=visual.conv1.out_channels,
        depth=len(blocks),
        heads=attn.num_heads,
        mlp_hidden=first.mlp.c_fc.out_features,
        act=act_name,
        eps=first.ln_1.eps,
        qkv_bias=attn.in_proj_bias is not None,
        proj_bias=attn.out_proj.bias is not None,
        patch_bias=visual.conv1.bias is not None,
        layer_scale=isinstance(first.ls_1, LayerScale),
        pre_norm=True,
        # ln_post normalises every token only when it runs before the pooling (open_clip's default).
        final_norm=pooled_norm,
    )


def _renamed(visual: nn.Module, final_norm: bool) -> dict:
    state = {}
    for key, value in visual.state_dict().items():
        if key.startswith(_HEAD_KEYS) or (key.startswith("ln_post.") and not final_norm):
            continue
        if key == "class_embedding":
            state["cls_token"] = value.reshape(1, 1, -1)
        elif key == "positional_embedding":
            state["pos_embed"] = value.unsqueeze(0)
        else:
            for old, new in _RENAMES:
                key = key.replace(old, new)
            state[key] = value
    return state
