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

import weakref
from contextlib import contextmanager
from typing import Any, Iterator

from torch import nn

from .patched_forwards import (
    RelevanceProbe,
    activation_forward,
    attention_forward,
    attention_pool_forward,
    conv_forward,
    layer_norm_forward,
    linear_forward,
    pos_embed_forward,
    rms_norm_forward,
)
from .walk import UnsupportedModelError, cached_plan, unsupported_parts

__all__ = ["ATTENTION_RULES", "RelevanceProbe", "UnsupportedModelError", "lrp_rules", "unsupported_parts"]

ATTENTION_RULES = ("attnlrp", "cp_lrp")

# Models inside an lrp_rules block: patching one twice would stack the rules.
_ACTIVE: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


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
    plan = cached_plan(model, layer, attention, tuple(trailing))
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
                forward = attention_forward(module, attention, probe, gamma)
            elif kind == "attention_pool":
                forward = attention_pool_forward(module, attention, probe, gamma)
            elif kind == "activation":
                forward = activation_forward(original, feeder if gamma == 0 else None, probe)
            elif kind == "layer_norm":
                forward = layer_norm_forward(module, original, probe)
            elif kind == "rms_norm":
                forward = rms_norm_forward(module, original)
            elif kind == "linear":
                forward = linear_forward(module, original, probe, gamma)
            else:
                forward = conv_forward(module, original, probe)
            patches.set(module, "forward", forward)
        patches.set(model, "_pos_embed", pos_embed_forward(model._pos_embed, probe))
        yield probe
    finally:
        probe.tensor = None
        patches.restore()
        _ACTIVE.discard(model)
