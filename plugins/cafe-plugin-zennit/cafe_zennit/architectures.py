"""Which models the zennit attributors explain, what canonizers and extra rules each needs, and the checks.

A missing rule or canonizer does not make zennit fail: it returns a map computed with the plain gradient in
place of a rule. So before anything runs, every module of the stem and stages ``0..layer`` must be one whose
rule is known (:func:`check_supported`), and once the composite is registered, every BatchNorm there must be
merged and every residual block canonized (:func:`check_canonical`).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from zennit.rules import Pass

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
]


class UnsupportedModelError(TypeError):
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


def architecture_of(model: nn.Module) -> str:
    """``"resnet"`` or ``"convnext"``.

    Raises
    ------
    UnsupportedModelError
        For any other model (a Vision Transformer: use the attnlrp plugin).
    """
    classes = _classes()
    if isinstance(model, classes["resnet"]):
        return "resnet"
    if isinstance(model, classes["convnext"]):
        return "convnext"
    raise UnsupportedModelError(
        f"the zennit attributors support timm ResNet and ConvNeXt models (the 'timm_conv' backbone), got "
        f"{type(model).__name__}; zennit has no rules for the LayerNorm, softmax and attention products of a "
        "Vision Transformer, use the 'attnlrp' or 'cp_lrp' attributor there"
    )


def running_modules(model: nn.Module, layer: int) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module of the stem and of stages ``0..layer``, recursively.

    Raises
    ------
    ValueError
        If ``layer`` is not a stage of the model.
    """
    if architecture_of(model) == "resnet":
        roots = ["conv1", "bn1", "act1", "maxpool"]
        stages = [name for name, _ in model.named_children() if name.startswith("layer")]
    else:
        roots = ["stem"]
        stages = [f"stages.{i}" for i in range(len(model.stages))]
    if not 0 <= int(layer) < len(stages):
        raise ValueError(f"layer {layer} is out of range; the model has stages 0..{len(stages) - 1}")
    lookup = dict(model.named_modules())
    found = []
    for root in roots + stages[: int(layer) + 1]:
        found += list(lookup[root].named_modules(prefix=root))
    return found


def check_supported(model: nn.Module, layer: int) -> None:
    """Raise unless every module that runs up to stage ``layer`` has a rule or is one of the known containers.

    Raises
    ------
    UnsupportedModelError
        Listing the modules without a rule (squeeze-excitation, anti-aliasing, GroupNorm, global response
        norm...), BatchNorms in training mode, blocks whose ``forward`` is already overridden, and stages
        with gradient checkpointing.
    """
    family = architecture_of(model)
    classes = _classes()
    leaves, containers = classes[f"{family}_leaves"], classes[f"{family}_containers"]
    blocks = classes[f"{family}_blocks"]
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
    if problems:
        raise UnsupportedModelError(
            f"no LRP rule for these modules of the stem and stages 0..{layer}: {', '.join(problems)}; supported "
            "are timm ResNets of BasicBlock/Bottleneck (conv, BatchNorm, ReLU, max and average pooling) and "
            "ConvNeXts (conv, LayerNorm, GELU MLP, layer scale)"
        )


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
