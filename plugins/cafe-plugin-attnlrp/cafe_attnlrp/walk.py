"""Which modules of a timm VisionTransformer run up to a block, and the LRP rule each of them gets.

:func:`unsupported_parts` says why a model cannot be patched (``[]`` when it can); :func:`cached_plan` gives
what :func:`cafe_attnlrp.patching.lrp_rules` patches, walking the modules once per model and layer.
"""

from __future__ import annotations

import weakref
from typing import Any

from torch import nn

from cafe_core.errors import IncompatibleComponentError

__all__ = ["UnsupportedModelError", "cached_plan", "unsupported_parts"]

# Per model and layer: the plan, and the class and children of each module it walked (see cached_plan).
_PLANS: "weakref.WeakKeyDictionary[nn.Module, dict[int, tuple]]" = weakref.WeakKeyDictionary()


class UnsupportedModelError(IncompatibleComponentError):
    """The model, or one of the modules that run up to the requested block, has no LRP rule here."""


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


def cached_plan(
    model: nn.Module, layer: int, who: str, trailing: tuple[str, ...] = ()
) -> list[tuple[str, str, nn.Module, nn.Module | None]]:
    """`_plan`, raising its problems; a plan is reused while every module it walked has the same class,
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
