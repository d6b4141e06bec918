"""Hugging Face ``transformers`` vision encoders as timm VisionTransformers with the same weights.

Each family's model is described as a :class:`~cafe_timm.assemble.ViTLayout` and its weights renamed: the
separate ``q``/``k``/``v`` projections are concatenated into timm's fused ``qkv`` (timm's ``Attention``
splits them back in the same order), DINOv2's ``layer_scale*.lambda1`` become timm's ``ls*.gamma``,
SigLIP's attention-pooling head (an ``nn.MultiheadAttention`` with a learned probe) becomes timm's
``AttentionPoolLatent`` (probe as the latent, ``in_proj`` split into ``q`` and ``kv``).

The position embedding is the one the library adds at the chosen input size: it is computed once by the
model's own ``embeddings.interpolate_pos_encoding`` (bicubic; DINOv2 with registers also antialiased), so
that an input size other than the checkpoint's gives the library's values, not timm's resampling.

Where each family's tokens are read (``hidden_states[i]`` counts the embeddings as 0, so
``hidden_states[L + 1]`` is the output of block ``L``, never normalised):

* CLIP (``CLIPVisionModel``): class token; ``pre_layrnorm`` after the embeddings (in ``hidden_states[0]``);
  ``post_layernorm`` is applied to the pooled class token only, so ``last_hidden_state`` is the output of
  the last block as it is.
* DINOv2 (``Dinov2Model``): class token, layer scale; ``last_hidden_state`` is the last block's output
  through the final ``layernorm``.
* DINOv2 with registers (``Dinov2WithRegistersModel``): class token, then registers (which get no position
  embedding), then patches; final ``layernorm`` as DINOv2.
* SigLIP (``SiglipVisionModel``): no class token; ``last_hidden_state`` through ``post_layernorm``;
  ``pooler_output`` is the attention-pooling head on it.
* ViT (``ViTModel``): class token; ``last_hidden_state`` through the final ``layernorm``; the pooler is unused.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .assemble import ViTLayout, build_vit, load_exact
from .errors import TimmBackboneError

__all__ = ["SUPPORTED", "vit_from_hf"]

# The library's names for the activations, as timm names them (the tanh approximations agree to rounding).
_ACTIVATIONS = {
    "gelu": "gelu",
    "quick_gelu": "quick_gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}

SUPPORTED = {
    "CLIPVisionModel": "CLIP",
    "Dinov2Model": "DINOv2",
    "Dinov2WithRegistersModel": "DINOv2 with registers",
    "SiglipVisionModel": "SigLIP",
    "ViTModel": "ViT",
}


def vit_from_hf(model: nn.Module, image_size: tuple[int, int]) -> nn.Module:
    """A timm ``VisionTransformer`` computing the hidden states of ``model`` at ``image_size``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        One of the classes of :data:`SUPPORTED`.
    image_size : tuple of int
        ``(H, W)``, multiples of the patch size.

    Raises
    ------
    TimmBackboneError
        For another model class or a configuration this conversion does not cover.
    """
    kind = type(model).__name__
    if kind not in SUPPORTED:
        raise TimmBackboneError(
            f"hf_vision reads {', '.join(SUPPORTED)}, not {kind}; load the checkpoint with one of these classes "
            "(the vision tower of a CLIPModel or SiglipModel is read as CLIPVisionModel or SiglipVisionModel)"
        )
    config = model.config
    patch = _pair(config.patch_size)
    if image_size[0] % patch[0] or image_size[1] % patch[1]:
        raise TimmBackboneError(
            f"image size {image_size} is not a multiple of the patch size {patch} of {kind}; set img_size to a "
            "multiple of the patch size"
        )
    if kind in ("CLIPVisionModel", "SiglipVisionModel"):
        layout, state = _clip_like(model, kind, image_size)
    else:
        layout, state = _encoder_like(model, kind, image_size)
    net = build_vit(layout)
    load_exact(net, state, f"{kind} ({config.name_or_path or 'random weights'})")
    return net


def _base_layout(config, kind: str, image_size: tuple[int, int], **kwargs) -> ViTLayout:
    act = config.hidden_act if isinstance(config.hidden_act, str) else ""
    if act not in _ACTIVATIONS:
        raise TimmBackboneError(f"{kind} uses the activation {config.hidden_act!r}, which has no timm equivalent here")
    kwargs.setdefault("mlp_hidden", getattr(config, "intermediate_size", None))
    return ViTLayout(
        image_size=tuple(image_size),
        patch_size=_pair(config.patch_size),
        width=config.hidden_size,
        depth=config.num_hidden_layers,
        heads=config.num_attention_heads,
        act=_ACTIVATIONS[act],
        eps=config.layer_norm_eps,
        **kwargs,
    )


def _clip_like(model: nn.Module, kind: str, image_size: tuple[int, int]) -> tuple[ViTLayout, dict]:
    """CLIP and SigLIP: ``vision_model.{embeddings, pre_layrnorm, encoder.layers, post_layernorm, head}``."""
    tower, clip = model.vision_model, kind == "CLIPVisionModel"
    head = getattr(tower, "head", None) if getattr(tower, "use_head", False) else None
    layout = _base_layout(
        model.config,
        kind,
        image_size,
        patch_bias=tower.embeddings.patch_embedding.bias is not None,
        class_token=clip,
        pre_norm=clip,
        global_pool="map" if head is not None else ("token" if clip else ""),
    )
    embeddings = tower.embeddings
    state = {"patch_embed.proj.weight": embeddings.patch_embedding.weight}
    if embeddings.patch_embedding.bias is not None:
        state["patch_embed.proj.bias"] = embeddings.patch_embedding.bias
    if clip:
        state["cls_token"] = embeddings.class_embedding.reshape(1, 1, -1)
        state.update(_prefixed("norm_pre.", tower.pre_layrnorm))
    state["pos_embed"] = _library_pos_embed(embeddings, image_size, 1 if clip else 0)
    for i, layer in enumerate(tower.encoder.layers):
        attn = layer.self_attn
        state.update(_prefixed(f"blocks.{i}.norm1.", layer.layer_norm1))
        state.update(_prefixed(f"blocks.{i}.norm2.", layer.layer_norm2))
        state.update(_fused_qkv(f"blocks.{i}.attn.qkv.", attn.q_proj, attn.k_proj, attn.v_proj))
        state.update(_prefixed(f"blocks.{i}.attn.proj.", attn.out_proj))
        state.update(_prefixed(f"blocks.{i}.mlp.fc1.", layer.mlp.fc1))
        state.update(_prefixed(f"blocks.{i}.mlp.fc2.", layer.mlp.fc2))
    state.update(_prefixed("norm.", tower.post_layernorm))
    if head is not None:
        state.update(_attention_pool(head, model.config.hidden_size))
    return layout, state


def _encoder_like(model: nn.Module, kind: str, image_size: tuple[int, int]) -> tuple[ViTLayout, dict]:
    """DINOv2 (with or without registers) and ViT: ``{embeddings, encoder.layer, layernorm}``."""
    config, embeddings = model.config, model.embeddings
    dinov2 = kind.startswith("Dinov2")
    registers = int(getattr(config, "num_register_tokens", 0)) if kind == "Dinov2WithRegistersModel" else 0
    gated = bool(getattr(config, "use_swiglu_ffn", False))
    if dinov2:
        hidden = int(config.hidden_size * config.mlp_ratio)
        mlp_hidden = (int(hidden * 2 / 3) + 7) // 8 * 8 if gated else hidden
    else:
        mlp_hidden = config.intermediate_size
    layout = _base_layout(
        config,
        kind,
        image_size,
        mlp_hidden=mlp_hidden,
        qkv_bias=bool(getattr(config, "qkv_bias", True)),
        layer_scale=dinov2,
        reg_tokens=registers,
        no_embed_class=registers > 0,
        gated_mlp=gated,
    )
    if gated:
        layout = dataclasses.replace(layout, act="silu")  # SwiGLU: the SiLU gate, whatever hidden_act says
    pos_embed = _library_pos_embed(embeddings, image_size, 1)
    state = _prefixed("patch_embed.proj.", embeddings.patch_embeddings.projection)
    if registers:
        # The library adds the class token's position and then inserts the registers, which get none.
        state["cls_token"] = embeddings.cls_token + pos_embed[:, :1]
        state["reg_token"] = embeddings.register_tokens
        state["pos_embed"] = pos_embed[:, 1:]
    else:
        state["cls_token"] = embeddings.cls_token
        state["pos_embed"] = pos_embed
    for i, layer in enumerate(model.encoder.layer):
        self_attention = layer.attention.attention
        norms = ("norm1", "norm2") if dinov2 else ("layernorm_before", "layernorm_after")
        state.update(_prefixed(f"blocks.{i}.norm1.", getattr(layer, norms[0])))
        state.update(_prefixed(f"blocks.{i}.norm2.", getattr(layer, norms[1])))
        state.update(
            _fused_qkv(f"blocks.{i}.attn.qkv.", self_attention.query, self_attention.key, self_attention.value)
        )
        state.update(_prefixed(f"blocks.{i}.attn.proj.", layer.attention.output.dense))
        if dinov2:
            state[f"blocks.{i}.ls1.gamma"] = layer.layer_scale1.lambda1
            state[f"blocks.{i}.ls2.gamma"] = layer.layer_scale2.lambda1
            fc1, fc2 = (layer.mlp.weights_in, layer.mlp.weights_out) if gated else (layer.mlp.fc1, layer.mlp.fc2)
        else:
            fc1, fc2 = layer.intermediate.dense, layer.output.dense
        state.update(_prefixed(f"blocks.{i}.mlp.fc1.", fc1))
        state.update(_prefixed(f"blocks.{i}.mlp.fc2.", fc2))
    state.update(_prefixed("norm.", model.layernorm))
    return layout, state


def _library_pos_embed(embeddings: nn.Module, image_size: tuple[int, int], prefix: int) -> torch.Tensor:
    """The position embedding the library adds to ``prefix`` class tokens and the patches at ``image_size``."""
    h, w = image_size
    patch = _pair(getattr(embeddings, "patch_size", None) or embeddings.config.patch_size)
    count = prefix + (h // patch[0]) * (w // patch[1])
    reference = embeddings.position_embedding.weight if hasattr(embeddings, "position_embedding") else (
        embeddings.position_embeddings
    )
    dummy = reference.new_zeros(1, count, reference.shape[-1])
    with torch.no_grad():
        return embeddings.interpolate_pos_encoding(dummy, h, w).reshape(1, count, -1).detach().clone()


def _attention_pool(head: nn.Module, width: int) -> dict:
    """SigLIP's ``SiglipMultiheadAttentionPoolingHead`` as timm's ``AttentionPoolLatent`` (``attn_pool.*``)."""
    attention = head.attention
    weight, bias = attention.in_proj_weight, attention.in_proj_bias
    return {
        "attn_pool.latent": head.probe,
        "attn_pool.q.weight": weight[:width],
        "attn_pool.q.bias": bias[:width],
        "attn_pool.kv.weight": weight[width:],
        "attn_pool.kv.bias": bias[width:],
        **_prefixed("attn_pool.proj.", attention.out_proj),
        **_prefixed("attn_pool.norm.", head.layernorm),
        **_prefixed("attn_pool.mlp.fc1.", head.mlp.fc1),
        **_prefixed("attn_pool.mlp.fc2.", head.mlp.fc2),
    }


def _fused_qkv(prefix: str, q: nn.Linear, k: nn.Linear, v: nn.Linear) -> dict:
    state = {prefix + "weight": torch.cat([q.weight, k.weight, v.weight])}
    if q.bias is not None:
        state[prefix + "bias"] = torch.cat([q.bias, k.bias, v.bias])
    return state


def _prefixed(prefix: str, module: nn.Module) -> dict:
    return {prefix + name: value for name, value in module.state_dict().items()}


def _pair(value) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    first, second = value
    return (int(first), int(second))
