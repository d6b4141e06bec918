"""Temporary, instance-level LRP patches of a timm VisionTransformer.

:func:`lrp_rules` replaces the ``forward`` of the module instances that run up to one block (never their
classes) with versions that compute the same values but propagate relevance by the LRP rules of
:mod:`cafe_attnlrp.rules`, and puts every attribute back when the ``with`` block ends, also when it ends
with an exception.

What is patched, for the patch embedding, ``norm_pre``, blocks ``0..layer`` and the modules the backbone runs
after them (``trailing``: the final ``norm``, the attention-pool head ``attn_pool``):

* ``LayerNorm``: the standard deviation is treated as a constant, the mean subtraction is not (the identity
  rule of normalisation); ``RmsNorm`` likewise with its root mean square;
* the activation of each ``Mlp`` (GELU): the identity rule;
* ``Attention``: re-implemented with the rule applied to the queries, keys and values (AttnLRP: gradients
  of q and k divided by 4 and of v by 2, as one factor per output channel of the qkv projection, the
  softmax keeps its ordinary gradient; CP-LRP: no gradient through q and k, and a backward through the
  values only);
* every ``Linear`` and the patch embedding's ``Conv2d``: unchanged gradient (or the LRP-gamma rule for the
  ``Linear`` layers when ``gamma > 0``), plus a record of the relevance their bias absorbs. The qkv
  projection's rule runs inside the attention's, and with LRP-0 the bias of the MLP's first layer is
  recorded by the activation's rule, so that these layers keep their own forward;
* ``AttentionPoolLatent`` (SigLIP's head, timm's ``global_pool="map"``): the rule of ``Attention`` between
  the learned latent query and the tokens' keys and values (the latent absorbs the relevance of the query);
* the model's ``_pos_embed``: a record of the relevance absorbed by the class, register and position
  embeddings.
"""

from __future__ import annotations

import functools
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from cafe_core.errors import IncompatibleComponentError

from .rules import (
    absorb,
    add_mask,
    gamma_linear,
    identity_rule,
    layer_norm_rule,
    scale_gradient,
    stop_gradient,
    straight_through,
    value_attention,
)

__all__ = ["ATTENTION_RULES", "RelevanceProbe", "UnsupportedModelError", "lrp_rules", "unsupported_parts"]

ATTENTION_RULES = ("attnlrp", "cp_lrp")

# Models inside an lrp_rules block: patching one twice would stack the rules.
_ACTIVE: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()
# Per model and layer: the plan, and the class and children of each module it walked (see _cached_plan).
_PLANS: "weakref.WeakKeyDictionary[nn.Module, dict[int, tuple]]" = weakref.WeakKeyDictionary()


class UnsupportedModelError(IncompatibleComponentError):
    """The model, or one of the modules that run up to the requested block, has no LRP rule here."""


@dataclass
class RelevanceProbe:
    """Where the patched modules report the relevance absorbed by biases and embeddings.

    Attributes
    ----------
    tensor : torch.Tensor or None
        ``[B]`` zeros requiring grad, set for the duration of one forward and backward pass: after the
        backward, its gradient holds each row's absorbed relevance. ``None`` records nothing.
    """

    tensor: torch.Tensor | None = None


class _InstancePatches:
    """Instance attributes set for a while, restored exactly (present or absent) afterwards."""

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, bool, Any]] = []

    def set(self, obj: Any, name: str, value: Any) -> None:
        state = vars(obj)
        self._saved.append((obj, name, name in state, state.get(name)))
        state[name] = value

    def restore(self) -> None:
        while self._saved:
            obj, name, had, old = self._saved.pop()
            if had:
                vars(obj)[name] = old
            else:
                vars(obj).pop(name, None)


def _timm_classes() -> dict[str, tuple[type, ...]]:
    import timm.layers as layers
    from timm.models import vision_transformer as vit

    def found(*names: str, module: Any = layers) -> tuple[type, ...]:
        return tuple(c for c in (getattr(module, n, None) for n in names) if isinstance(c, type))

    return {
        "vit": (vit.VisionTransformer,),
        "attention_pool": found("AttentionPoolLatent"),
        "attention": found("Attention", module=vit) or found("Attention"),
        "mlp": found("Mlp", module=vit) or found("Mlp"),
        "layer_norm": (nn.LayerNorm,) + found("LayerNorm", "LayerNormFp32"),
        "rms_norm": found("RmsNorm"),
        "passthrough": (
            nn.Identity,
            nn.Dropout,
            nn.Sequential,
            nn.ModuleList,
            *found("Block", "ResPostBlock", "LayerScale", module=vit),
            *found("LayerScale", "DropPath", "PatchDropout", "PatchEmbed"),
        ),
    }


def _cached_plan(
    model: nn.Module, layer: int, who: str, trailing: tuple[str, ...] = ()
) -> list[tuple[str, str, nn.Module, nn.Module | None]]:
    """:func:`_plan`, raising its problems; a plan is reused while every module it walked has the same class,
    children and ``inplace`` flag.

    Walking the modules takes longer than a small model's forward pass; checking them is cheaper. The cache
    holds no reference to the model itself, so that it does not keep it alive.
    """
    key = (layer, tuple(trailing))
    cached = _PLANS.get(model, {}).get(key)
    if cached is not None and _state(model) == cached[0] and all(_state(m) == state for m, state in cached[1]):
        return cached[2]
    plan, walked, problems = _plan(model, layer, who, trailing)
    if problems:
        raise UnsupportedModelError("; ".join(problems))
    states = [(m, _state(m)) for m in [model.blocks, *walked]]
    _PLANS.setdefault(model, {})[key] = (_state(model), states, plan)
    return plan


def _state(module: nn.Module) -> tuple:
    return type(module), tuple(module._modules.items()), vars(module).get("inplace")


def unsupported_parts(
    model: nn.Module, layer: int | None = None, who: str = "attnlrp", trailing: tuple[str, ...] = ()
) -> list[str]:
    """Why :func:`lrp_rules` cannot patch ``model`` up to block ``layer``: ``[]`` when it can.

    The same walk over the modules that :func:`lrp_rules` makes before it patches anything.

    Parameters
    ----------
    model : torch.nn.Module
        The backbone's model.
    layer : int, optional
        Last block that would run; by default the last block of the model, so that every block is checked.
    who : str
        The attributor the messages name.
    trailing : tuple of str
        Names of the model's submodules that run after the blocks (see
        ``cafe_timm.vit.TimmViT.trailing_modules``): the final ``norm``, the head ``attn_pool``.

    Returns
    -------
    list of str
        One message per problem, naming the model class or the modules without a rule, and what to use
        instead.
    """
    return _plan(model, layer, who, trailing)[2]


def _plan(
    model: nn.Module, layer: int | None, who: str, trailing: tuple[str, ...] = ()
) -> tuple[list[tuple[str, str, nn.Module, nn.Module | None]], list[nn.Module], list[str]]:
    """``(name, kind, module, feeder)`` of every module to patch, the modules walked, and the problems.

    A model with problems (anything without a rule) gets no plan. ``feeder`` is the ``Linear`` whose output
    only this module reads (the qkv projection of an attention, the first MLP layer of an activation) or
    ``None``.
    """
    classes = _timm_classes()
    if not isinstance(model, classes["vit"]):
        kind = type(model)
        return [], [], [
            f"{who} has LRP rules for timm VisionTransformer blocks only, but the backbone's model is a "
            f"{kind.__name__} ({kind.__module__}); use gradient_x_input or integrated_gradients, or for a timm "
            "ResNet or ConvNeXt the zennit attributors (lrp_epsilon_plus_flat, lrp_epsilon_gamma_box...)"
        ]
    depth = len(model.blocks)
    layer = depth - 1 if layer is None else int(layer)
    if not 0 <= layer < depth:
        raise ValueError(f"layer {layer} is out of range; the model has blocks 0..{depth - 1}")
    parts = [("patch_embed", model.patch_embed), ("patch_drop", model.patch_drop), ("norm_pre", model.norm_pre)]
    parts += [(f"blocks.{i}", model.blocks[i]) for i in range(layer + 1)]
    parts += [(name, getattr(model, name)) for name in trailing]

    modules = [entry for prefix, part in parts for entry in part.named_modules(prefix=prefix)]
    attention_forwards = {c.forward for c in classes["attention"]}
    pool_forwards = {c.forward for c in classes["attention_pool"]}
    mlp_forwards = {c.forward for c in classes["mlp"]}
    mlps = {id(m) for _, m in modules if type(m).forward in mlp_forwards and isinstance(m, classes["mlp"])}
    activations: dict[int, list[nn.Module]] = {}  # each activation's first MLP layers
    for _, module in modules:
        if id(module) in mlps:
            activations.setdefault(id(module.act), []).append(module.fc1)
    kinds = {nn.Linear: "linear", nn.Conv2d: "conv"}
    kinds.update({c: "layer_norm" for c in classes["layer_norm"]})
    kinds.update({c: "rms_norm" for c in classes["rms_norm"]})
    kinds.update({c: None for c in classes["passthrough"]})
    plan, unsupported = [], []
    for sub, module in modules:
        kind = type(module)
        if id(module) in activations:
            if getattr(module, "inplace", False):
                unsupported.append(f"{sub} (in-place {kind.__name__}: build it with inplace=False)")
            feeders = activations[id(module)]
            feeder = feeders[0] if len(feeders) == 1 and type(feeders[0]) is nn.Linear else None
            plan.append((sub, "activation", module, feeder))
        elif isinstance(module, classes["attention_pool"]) and kind.forward in pool_forwards:
            if module.pos_embed is not None or module.latent_len != 1:
                unsupported.append(f"{sub} (attention pool with its own position embedding or several latents)")
            plan.append((sub, "attention_pool", module, module.kv))
        elif kind.forward in attention_forwards and isinstance(module, classes["attention"]):
            if getattr(module, "gate", None) is not None:
                unsupported.append(f"{sub} (gated attention)")
            plan.append((sub, "attention", module, module.qkv))  # a qkv that is no Linear is reported
        elif id(module) in mlps:
            continue  # its activation and layers have their own rules
        elif kind not in kinds:
            unsupported.append(f"{sub} ({kind.__name__})")
        elif kinds[kind] is not None:
            plan.append((sub, kinds[kind], module, None))
    if unsupported:
        after = f" and {', '.join(trailing)}" if trailing else ""
        return [], [], [
            f"{who} has no LRP rule for these modules of blocks 0..{layer}{after} of the backbone's "
            f"{type(model).__name__}: {', '.join(unsupported)}; supported are timm's Block with Attention, Mlp "
            "(element-wise activation), LayerNorm, RmsNorm, LayerScale, and the AttentionPoolLatent head: use "
            "gradient_x_input or integrated_gradients for this model"
        ]
    seen, unique = set(), []
    for entry in plan:
        if id(entry[2]) not in seen:
            seen.add(id(entry[2]))
            unique.append(entry)
    return unique, [module for _, module in modules], []


@functools.lru_cache(maxsize=16)
def _qkv_factors(width: int, q_and_k: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Gradient factors of the qkv projection's output channels: ``q_and_k`` for q and k, 1/2 for v."""
    return torch.tensor([q_and_k, q_and_k, 0.5], dtype=dtype, device=device).repeat_interleave(width)


def _attention_forward(attn: nn.Module, rule: str, probe: RelevanceProbe, gamma: float) -> Callable[..., torch.Tensor]:
    """The attention with its rule, and the rule of its qkv projection (whose own forward is left as it is)."""
    # AttnLRP scales the gradients of q, k and v by constants, which commute with every backward map in
    # between: one per-channel factor on the projection's output does it all, unless q or k are normalised
    # (then their factors stay after the norms, whose bias relevance is measured with the scaled gradient).
    per_channel = isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity)
    qkv = attn.qkv

    def qkv_rule(x: torch.Tensor) -> torch.Tensor:
        factor = None
        if rule == "attnlrp":
            factor = _qkv_factors(qkv.out_features // 3, 0.25 if per_channel else 1.0, x.dtype, x.device)
        elif gamma == 0 and (qkv.bias is None or probe.tensor is None):
            return qkv(x)
        return gamma_linear(x, qkv.weight, qkv.bias, gamma, probe.tensor, factor)

    def forward(x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        b, n, _ = x.shape
        heads, head_dim = attn.num_heads, attn.head_dim
        qkv = qkv_rule(x).reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        if rule == "cp_lrp":
            q, k = stop_gradient(q), stop_gradient(k)
        elif not per_channel:
            # Uniform rule on q @ k^T and on attn @ v: q and k feed two bilinear products in a row.
            q, k = scale_gradient(q, 4), scale_gradient(k, 4)
        dropout = attn.attn_drop.p if attn.training else 0.0
        if attn.fused_attn and rule == "cp_lrp" and dropout == 0:
            out = value_attention(q, k, v, attn_mask, is_causal)
        elif attn.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout, is_causal=is_causal)
        else:
            scores = (q * attn.scale) @ k.transpose(-2, -1)
            scores = add_mask(scores, attn_mask, is_causal)
            out = attn.attn_drop(scores.softmax(dim=-1)) @ v
        out = out.transpose(1, 2).reshape(b, n, heads * head_dim)
        norm = getattr(attn, "norm", None)
        if norm is not None:
            out = norm(out)
        return attn.proj_drop(attn.proj(out))

    return forward


@functools.lru_cache(maxsize=16)
def _kv_factors(width: int, k: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Gradient factors of the kv projection's output channels: ``k`` for the keys, 1/2 for the values."""
    return torch.tensor([k, 0.5], dtype=dtype, device=device).repeat_interleave(width)


def _attention_pool_forward(
    pool: nn.Module, rule: str, probe: RelevanceProbe, gamma: float
) -> Callable[..., torch.Tensor]:
    """timm's ``AttentionPoolLatent`` with the attention rule, its q and kv projections' rules run here.

    The query is a learned latent, a constant: under AttnLRP the relevance its share of ``q @ k^T`` receives
    is absorbed by the latent (and the q projection's bias); under CP-LRP no relevance reaches it.
    """
    per_channel = isinstance(pool.q_norm, nn.Identity) and isinstance(pool.k_norm, nn.Identity)
    q_proj, kv_proj = pool.q, pool.kv

    def project(linear: nn.Module, x: torch.Tensor, factor: torch.Tensor | None) -> torch.Tensor:
        if not isinstance(linear, nn.Linear):  # no q projection: the latent is the query
            return x
        if factor is None and gamma == 0 and (linear.bias is None or probe.tensor is None):
            return linear(x)
        return gamma_linear(x, linear.weight, linear.bias, gamma, probe.tensor, factor)

    def forward(x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        heads, head_dim, length = pool.num_heads, pool.head_dim, pool.latent_len
        attnlrp = rule == "attnlrp"
        latent = pool.latent.expand(b, -1, -1)
        if attnlrp and probe.tensor is not None:
            latent = absorb(latent, pool.latent, probe.tensor)
        q_factor = k_factor = None
        if attnlrp and per_channel:
            q_factor = x.new_full((q_proj.out_features,), 0.25) if isinstance(q_proj, nn.Linear) else None
            k_factor = _kv_factors(kv_proj.out_features // 2, 0.25, x.dtype, x.device)
        elif attnlrp:
            k_factor = _kv_factors(kv_proj.out_features // 2, 1.0, x.dtype, x.device)
        q = project(q_proj, latent, q_factor).reshape(b, length, heads, head_dim).transpose(1, 2)
        if attnlrp and per_channel and not isinstance(q_proj, nn.Linear):
            q = scale_gradient(q, 4)
        k, v = project(kv_proj, x, k_factor).reshape(b, n, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = pool.q_norm(q), pool.k_norm(k)
        if rule == "cp_lrp":
            q, k = stop_gradient(q), stop_gradient(k)
        elif not per_channel:
            q, k = scale_gradient(q, 4), scale_gradient(k, 4)
        if pool.fused_attn and rule == "cp_lrp":
            out = value_attention(q, k, v, attn_mask)
        elif pool.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        else:
            out = add_mask((q * pool.scale) @ k.transpose(-2, -1), attn_mask, False).softmax(dim=-1) @ v
        out = pool.proj_drop(pool.proj(out.transpose(1, 2).reshape(b, length, c)))
        if pool.mlp is not None:
            out = out + pool.mlp(pool.norm(out))
        return out[:, 0] if pool.pool == "token" else out.mean(1) if pool.pool == "avg" else out

    return forward


def _runs_f_layer_norm(norm: nn.Module) -> bool:
    """Whether the module's forward is ``F.layer_norm(x, normalized_shape, weight, bias, eps)`` and nothing else.

    The rule can then run that op itself and reuse the ``1 / std`` it computes.
    """
    import timm.layers

    forward = type(norm).forward
    timm_norm = getattr(timm.layers, "LayerNorm", None)
    return forward is nn.LayerNorm.forward or (
        timm_norm is not None and forward is timm_norm.forward and getattr(norm, "_fast_norm", True) is False
    )


def _layer_norm_forward(norm: nn.Module, original: Callable, probe: RelevanceProbe) -> Callable:
    dims = tuple(range(-len(norm.normalized_shape), 0))
    plain = _runs_f_layer_norm(norm)

    def forward(x: torch.Tensor) -> torch.Tensor:
        fn = None if plain and not torch.is_autocast_enabled(x.device.type) else original
        return layer_norm_rule(fn, x, dims, norm.weight, norm.eps, norm.bias, probe.tensor)

    return forward


def _rms_norm_forward(norm: nn.Module, original: Callable) -> Callable:
    dims = tuple(range(-len(norm.normalized_shape), 0))

    def forward(x: torch.Tensor) -> torch.Tensor:
        scale = torch.rsqrt(x.pow(2).mean(dim=dims, keepdim=True) + norm.eps)
        surrogate = x * scale.detach()
        if norm.weight is not None:
            surrogate = surrogate * norm.weight
        return straight_through(original(x), surrogate)

    return forward


def _linear_forward(linear: nn.Linear, original: Callable, probe: RelevanceProbe, gamma: float) -> Callable:
    def forward(x: torch.Tensor) -> torch.Tensor:
        if gamma == 0 and (linear.bias is None or probe.tensor is None):
            return original(x)
        return gamma_linear(x, linear.weight, linear.bias, gamma, probe.tensor)

    return forward


def _conv_forward(conv: nn.Conv2d, original: Callable, probe: RelevanceProbe) -> Callable:
    def forward(x: torch.Tensor) -> torch.Tensor:
        out = original(x)
        return out if conv.bias is None else absorb(out, conv.bias.view(-1, 1, 1), probe.tensor)

    return forward


def _activation_forward(original: Callable, feeder: nn.Linear | None, probe: RelevanceProbe) -> Callable:
    """The identity rule; with ``feeder``, the layer before it, it also records the relevance of its bias."""
    if feeder is None or feeder.bias is None:
        return lambda x: identity_rule(original, x)
    return lambda x: identity_rule(original, x, feeder.bias, probe.tensor)


def _pos_embed_forward(original: Callable, probe: RelevanceProbe) -> Callable:
    def forward(x: torch.Tensor) -> torch.Tensor:
        out = original(x)
        if probe.tensor is None:
            return out
        # The embedding step is affine in the patch tokens: its value at zero is what it adds.
        with torch.no_grad():
            added = original(torch.zeros_like(x))
        return absorb(out, added, probe.tensor)

    return forward


@contextmanager
def lrp_rules(
    model: nn.Module, layer: int, attention: str = "attnlrp", gamma: float = 0.0, trailing: tuple[str, ...] = ()
) -> Iterator[RelevanceProbe]:
    """Patch the module instances of a timm VisionTransformer that run up to block ``layer``.

    Inside the ``with`` block the model computes the same values as before; gradients taken through it
    are LRP relevances divided by the inputs (gradient x input gives the relevance). All patches are
    instance attributes and are removed on exit, also when the block raises.

    Parameters
    ----------
    model : timm.models.vision_transformer.VisionTransformer
        The model; only its patch embedding, ``norm_pre``, blocks ``0..layer`` and ``trailing`` are patched.
    layer : int
        Last block that runs.
    attention : {"attnlrp", "cp_lrp"}
        Rule inside the attention: AttnLRP's uniform rule, or CP-LRP's stop-gradient on queries and keys.
    gamma : float
        LRP-gamma for the ``Linear`` layers of the blocks, a finite number ``>= 0`` (as
        :class:`cafe_attnlrp.params.LRPParams` checks); ``0`` keeps their plain gradient (LRP-0).
    trailing : tuple of str
        Names of the model's submodules that run after block ``layer`` (the final ``norm``, the head
        ``attn_pool``), patched as well.

    Yields
    ------
    RelevanceProbe
        Set its ``tensor`` to ``[B]`` zeros requiring grad before a forward pass to collect the relevance
        absorbed by biases and embeddings per row.

    Raises
    ------
    UnsupportedModelError
        For a model that is not a timm VisionTransformer, or with a module that has no rule here (gated
        MLPs, gated attention, hybrid CNN stems...): the problems of :func:`unsupported_parts`.
    RuntimeError
        If the model is already inside an ``lrp_rules`` block.
    """
    if attention not in ATTENTION_RULES:
        raise ValueError(f"attention must be one of {ATTENTION_RULES}, got {attention!r}")
    plan = _cached_plan(model, layer, attention, tuple(trailing))
    if model in _ACTIVE:
        raise RuntimeError("the model is already inside an lrp_rules block; the rules cannot be nested")
    _ACTIVE.add(model)
    probe = RelevanceProbe()
    patches = _InstancePatches()
    # An attention runs the rule of its qkv projection itself; with LRP-0 the activation's rule records
    # the bias of the first MLP layer. These projections keep their own forward.
    fed = {id(feeder) for _, kind, _, feeder in plan if feeder is not None and (kind == "attention" or gamma == 0)}
    fed |= {id(part) for _, kind, pool, _ in plan if kind == "attention_pool" for part in (pool.q, pool.kv)}
    try:
        for _, kind, module, feeder in plan:
            original = module.forward
            if kind == "linear" and id(module) in fed:
                continue
            if kind == "attention":
                forward = _attention_forward(module, attention, probe, gamma)
            elif kind == "attention_pool":
                forward = _attention_pool_forward(module, attention, probe, gamma)
            elif kind == "activation":
                forward = _activation_forward(original, feeder if gamma == 0 else None, probe)
            elif kind == "layer_norm":
                forward = _layer_norm_forward(module, original, probe)
            elif kind == "rms_norm":
                forward = _rms_norm_forward(module, original)
            elif kind == "linear":
                forward = _linear_forward(module, original, probe, gamma)
            else:
                forward = _conv_forward(module, original, probe)
            patches.set(module, "forward", forward)
        patches.set(model, "_pos_embed", _pos_embed_forward(model._pos_embed, probe))
        yield probe
    finally:
        probe.tensor = None
        patches.restore()
        _ACTIVE.discard(model)
