"""Which models the zennit attributors explain, what canonizers and extra rules each needs, and the checks.

A missing rule or canonizer does not make zennit fail: it returns a map computed with the plain gradient in
place of a rule. So before anything runs, every module of the stem and stages ``0..layer`` must be one whose
rule is known (:func:`unsupported_parts`, raised by :func:`check_supported`), and once the composite is
registered, every BatchNorm there must be merged and every residual block canonized (:func:`check_canonical`).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from zennit.rules import Pass

from cafe_core.errors import IncompatibleComponentError

from .canonizers import convnext_canonizers, merged_batch_norms, resnet_canonizers
from .rules import LayerNormEpsilon

__all__ = [
    "UnsupportedModelError",
    "architecture_of",
    "canonizers_for",
    "check_canonical",
    "check_supported",
    "extra_rules",
    "running_modules",
    "unsupported_parts",
]


class UnsupportedModelError(IncompatibleComponentError):
    """The model, or one of the modules that run up to the requested stage, has no LRP rule here."""


def _classes() -> dict[str, Any]:
    from timm.layers import DropPath, LayerNorm, LayerNorm2d
    from timm.layers.activations import GELU
    from timm.layers.mlp import Mlp
    from timm.models.convnext import ConvNeXt, ConvNeXtBlock, ConvNeXtStage
    from timm.models.resnet import BasicBlock, Bottleneck, ResNet

    common_leaves = (nn.Conv2d, nn.Identity, nn.Dropout, DropPath)
    return {
        "resnet": ResNet,
        "convnext": ConvNeXt,
        "resnet_blocks": (BasicBlock, Bottleneck),
        "convnext_blocks": (ConvNeXtBlock,),
        "resnet_leaves": common_leaves + (nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d),
        "resnet_containers": (nn.Sequential, BasicBlock, Bottleneck),
        "convnext_leaves": common_leaves + (nn.Linear, nn.LayerNorm, LayerNorm, LayerNorm2d, nn.GELU, GELU),
        "convnext_containers": (nn.Sequential, ConvNeXtStage, ConvNeXtBlock, Mlp),
        "layer_norm_2d": LayerNorm2d,
        "layer_norm": (nn.LayerNorm, LayerNorm),
        "gelu": GELU,
    }


def _family(model: nn.Module) -> str | None:
    classes = _classes()
    if isinstance(model, classes["resnet"]):
        return "resnet"
    if isinstance(model, classes["convnext"]):
        return "convnext"
    return None


def _unsupported_model_message(model: nn.Module) -> str:
    kind = type(model)
    return (
        f"the zennit attributors have LRP rules for timm ResNet and ConvNeXt models only (the 'timm_conv' "
        f"backbone), but the backbone's model is a {kind.__name__} ({kind.__module__}); zennit has no rules for "
        "the LayerNorm, softmax and attention products of a Vision Transformer: use the 'attnlrp' or 'cp_lrp' "
        "attributor for a timm ViT, or gradient_x_input or integrated_gradients for other models"
    )


def architecture_of(model: nn.Module) -> str:
    """``"resnet"`` or ``"convnext"``.

    Raises
    ------
    UnsupportedModelError
        For any other model (a Vision Transformer: use the attnlrp plugin).
    """
    family = _family(model)
    if family is None:
        raise UnsupportedModelError(_unsupported_model_message(model))
    return family


def _layout(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of the stem modules and of the stages."""
    if architecture_of(model) == "resnet":
        stages = [name for name, _ in model.named_children() if name.startswith("layer")]
        return ["conv1", "bn1", "act1", "maxpool"], stages
    return ["stem"], [f"stages.{i}" for i in range(len(model.stages))]


def running_modules(model: nn.Module, layer: int | None = None) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module of the stem and of stages ``0..layer``, recursively.

    ``layer=None`` means the last stage.

    Raises
    ------
    ValueError
        If ``layer`` is not a stage of the model.
    """
    roots, stages = _layout(model)
    layer = len(stages) - 1 if layer is None else int(layer)
    if not 0 <= layer < len(stages):
        raise ValueError(f"layer {layer} is out of range; the model has stages 0..{len(stages) - 1}")
    lookup = dict(model.named_modules())
    found = []
    for root in roots + stages[: layer + 1]:
        found += list(lookup[root].named_modules(prefix=root))
    return found


def unsupported_parts(model: nn.Module, layer: int | None = None) -> list[str]:
    """Why the zennit attributors cannot explain ``model`` up to stage ``layer``: ``[]`` when they can.

    Every module that runs up to the stage must have a rule or be one of the known containers.

    Parameters
    ----------
    model : torch.nn.Module
        The backbone's model.
    layer : int, optional
        Last stage that would run; by default the last stage, so that every stage is checked.

    Returns
    -------
    list of str
        A message naming the model class, or the modules without a rule (squeeze-excitation, anti-aliasing,
        GroupNorm, global response norm...), BatchNorms in training mode, blocks whose ``forward`` is already
        overridden and stages with gradient checkpointing, with what to use instead.
    """
    family = _family(model)
    if family is None:
        return [_unsupported_model_message(model)]
    classes = _classes()
    leaves, containers = classes[f"{family}_leaves"], classes[f"{family}_containers"]
    blocks = classes[f"{family}_blocks"]
    layer = len(_layout(model)[1]) - 1 if layer is None else int(layer)
    problems = []
    for name, module in running_modules(model, layer):
        kind = type(module)
        is_leaf = next(iter(module.children()), None) is None
        if is_leaf and kind not in leaves:
            problems.append(f"{name} ({kind.__name__}: no rule)")
        elif not is_leaf and kind not in containers:
            problems.append(f"{name} ({kind.__name__}: unknown block)")
        if isinstance(module, nn.BatchNorm2d) and (module.training or not module.track_running_stats):
            problems.append(f"{name} (BatchNorm2d in training mode: call model.eval())")
        if isinstance(module, blocks) and "forward" in vars(module):
            problems.append(f"{name} ({kind.__name__} whose forward is already replaced)")
        if getattr(module, "grad_checkpointing", False):
            problems.append(f"{name} (gradient checkpointing runs the blocks twice)")
    if not problems:
        return []
    return [
        f"the zennit attributors have no LRP rule for these modules of the stem and stages 0..{layer} of the "
        f"backbone's {type(model).__name__}: {', '.join(problems)}; supported are timm ResNets of "
        "BasicBlock/Bottleneck (conv, BatchNorm, ReLU, max and average pooling) and ConvNeXts (conv, LayerNorm, "
        "GELU MLP, layer scale): use gradient_x_input or integrated_gradients for this model"
    ]


def check_supported(model: nn.Module, layer: int) -> None:
    """Raise the problems of :func:`unsupported_parts` (up to stage ``layer``), if any.

    Raises
    ------
    UnsupportedModelError
        With every problem found.
    """
    problems = unsupported_parts(model, layer)
    if problems:
        raise UnsupportedModelError("; ".join(problems))


def canonizers_for(model: nn.Module) -> list[Any]:
    """The canonizers the model's family needs (fresh instances)."""
    return resnet_canonizers() if architecture_of(model) == "resnet" else convnext_canonizers()


def extra_rules(model: nn.Module, epsilon: float) -> list[tuple[tuple[type, ...], Any]]:
    """Rules to put before a composite's layer map for modules zennit's composites do not map.

    For ConvNeXt: the epsilon rule on the LayerNorms (standard deviation held constant) and the
    pass-through rule on timm's ``GELU`` (zennit maps ``torch.nn.GELU`` only). ResNets need none.
    """
    if architecture_of(model) == "resnet":
        return []
    classes = _classes()
    return [
        ((classes["layer_norm_2d"],), LayerNormEpsilon(epsilon, channels_first=True)),
        (classes["layer_norm"], LayerNormEpsilon(epsilon, channels_first=False)),
        ((classes["gelu"],), Pass()),
    ]


def check_canonical(model: nn.Module, layer: int, applied: list[Any]) -> None:
    """Raise unless the canonizers ``applied`` (a registered composite's handles) reached every module
    that runs up to stage ``layer``: each BatchNorm merged and each residual block given its ``Sum``.

    Raises
    ------
    UnsupportedModelError
        Naming the BatchNorms not merged (not right after a convolution) and the blocks not canonized.
    """
    classes = _classes()
    blocks = classes["resnet_blocks"] + classes["convnext_blocks"]
    merged = merged_batch_norms(applied)
    missing = []
    for name, module in running_modules(model, layer):
        if isinstance(module, nn.BatchNorm2d) and id(module) not in merged:
            missing.append(f"{name} (BatchNorm2d not merged into a convolution)")
        elif isinstance(module, blocks) and "canonizer_sum" not in module._modules:
            missing.append(f"{name} ({type(module).__name__} without a canonical residual sum)")
    if missing:
        raise UnsupportedModelError(
            f"the canonizers did not reach {', '.join(missing)}; the relevance would be silently wrong"
        )
