"""Canonizers for timm's ResNet and ConvNeXt: the model rewritten, for one call, into a form LRP rules fit.

zennit's own ``ResNetCanonizer`` knows torchvision's blocks only. Without a canonizer, zennit gives silently
wrong relevance on timm's: the residual sum ``x += shortcut`` has no rule, so autograd hands the whole
relevance of the sum to both branches; a BatchNorm left alone gets the pass-through rule, so its shift never
absorbs relevance and its scale never reaches the rule of the convolution before it; a layer scale
``x * gamma`` multiplies the relevance by ``gamma``.

Each canonizer here is undone by its ``remove``: parameters get their original tensors back and instance
attributes are deleted.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from zennit.canonizers import AttributeCanonizer, Canonizer, MergeBatchNorm, SequentialMergeBatchNorm
from zennit.layer import Sum

__all__ = [
    "ConvNeXtBlockCanonizer",
    "ExactSequentialMergeBatchNorm",
    "TimmResNetBlockCanonizer",
    "convnext_canonizers",
    "merged_batch_norms",
    "resnet_canonizers",
]


class ExactSequentialMergeBatchNorm(SequentialMergeBatchNorm):
    """zennit's ``SequentialMergeBatchNorm`` with the merged BatchNorm reduced to the exact identity.

    After the merge zennit leaves the BatchNorm with mean 0, variance 1, weight 1, bias 0 but its own ``eps``,
    so it still divides by ``sqrt(1 + eps)``: every merged BatchNorm would shrink the activations (and ``z``)
    by about ``5e-6``. Setting ``eps`` to 0 for the duration of the merge makes the canonical model compute
    what the original computes, up to rounding.
    """

    def register(self, linears, batch_norm) -> None:
        """Merge ``batch_norm`` into ``linears`` and make it the identity."""
        self.batch_norm_eps = batch_norm.eps
        super().register(linears, batch_norm)
        batch_norm.eps = 0.0

    def remove(self) -> None:
        """Restore the parameters, statistics and ``eps`` of the modules."""
        super().remove()
        self.batch_norm.eps = self.batch_norm_eps


def _resnet_block_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's ``BasicBlock.forward`` and ``Bottleneck.forward`` with the residual sum as a ``Sum`` module."""
    shortcut = x
    x = self.conv1(x)
    x = self.bn1(x)
    if hasattr(self, "conv3"):
        x = self.act1(x)
        x = self.conv2(x)
        x = self.bn2(x)
        x = self.drop_block(x)
        x = self.act2(x)
        x = self.aa(x)
        x = self.conv3(x)
        x = self.bn3(x)
        last_act = self.act3
    else:
        x = self.drop_block(x)
        x = self.act1(x)
        x = self.aa(x)
        x = self.conv2(x)
        x = self.bn2(x)
        last_act = self.act2
    if self.se is not None:
        x = self.se(x)
    if self.drop_path is not None:
        x = self.drop_path(x)
    if self.downsample is not None:
        shortcut = self.downsample(shortcut)
    x = self.canonizer_sum(torch.stack([shortcut, x], dim=-1))
    return last_act(x)


class TimmResNetBlockCanonizer(AttributeCanonizer):
    """Give every timm ``BasicBlock`` and ``Bottleneck`` a ``Sum`` module for its residual sum.

    zennit's composites map ``Sum`` to the ``Norm`` rule, which shares the relevance of the sum between the
    shortcut and the residual branch in proportion to their values.
    """

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @staticmethod
    def _attribute_map(name: str, module: nn.Module) -> dict[str, Any] | None:
        from timm.models.resnet import BasicBlock, Bottleneck

        if type(module) in (BasicBlock, Bottleneck):
            return {"forward": _resnet_block_forward.__get__(module), "canonizer_sum": Sum()}
        return None

    def copy(self) -> "TimmResNetBlockCanonizer":
        """A fresh canonizer of the same kind."""
        return TimmResNetBlockCanonizer()


def _convnext_block_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's ``ConvNeXtBlock.forward``, layer scale merged into ``mlp.fc2``, residual sum as a ``Sum`` module."""
    shortcut = x
    x = self.conv_dw(x)
    if self.use_conv_mlp:
        x = self.norm(x)
        x = self.mlp(x)
    else:
        x = x.permute(0, 2, 3, 1)
        x = self.norm(x)
        x = self.mlp(x)
        x = x.permute(0, 3, 1, 2)
    x = self.drop_path(x)
    return self.canonizer_sum(torch.stack([self.shortcut(shortcut), x], dim=-1))


class ConvNeXtBlockCanonizer(Canonizer):
    """Merge each timm ``ConvNeXtBlock``'s layer scale ``gamma`` into ``mlp.fc2`` and give it a ``Sum`` module.

    The layer scale multiplies each channel of ``fc2``'s output by ``gamma``, so it is folded into ``fc2``'s
    weight and bias like a BatchNorm into the convolution before it; the block's ``forward`` is replaced by
    one that skips the multiplication and adds the shortcut through ``Sum`` (the ``Norm`` rule).
    """

    def __init__(self) -> None:
        super().__init__()
        self.block: nn.Module | None = None
        self.fc2_params: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def apply(self, root_module: nn.Module) -> list["ConvNeXtBlockCanonizer"]:
        """Canonize every ``ConvNeXtBlock`` under ``root_module``; returns the applied instances."""
        from timm.models.convnext import ConvNeXtBlock

        instances = []
        for module in root_module.modules():
            if type(module) is ConvNeXtBlock:
                instance = self.copy()
                instance.register(module)
                instances.append(instance)
        return instances

    def register(self, block: nn.Module) -> None:
        """Merge the layer scale and replace the block's ``forward``."""
        fc2 = block.mlp.fc2
        self.block = block
        self.fc2_params = (fc2.weight.data, None if fc2.bias is None else fc2.bias.data)
        if block.gamma is not None:
            gamma = block.gamma.data
            fc2.weight.data = fc2.weight.data * gamma.reshape(-1, *(1,) * (fc2.weight.dim() - 1))
            if fc2.bias is not None:
                fc2.bias.data = fc2.bias.data * gamma
        block.canonizer_sum = Sum()
        block.forward = _convnext_block_forward.__get__(block)

    def remove(self) -> None:
        """Restore ``fc2``'s tensors and the block's own ``forward``."""
        block, (weight, bias) = self.block, self.fc2_params
        block.mlp.fc2.weight.data = weight
        if bias is not None:
            block.mlp.fc2.bias.data = bias
        del block.forward
        del block.canonizer_sum

    def copy(self) -> "ConvNeXtBlockCanonizer":
        """A fresh canonizer of the same kind."""
        return ConvNeXtBlockCanonizer()


def resnet_canonizers() -> list[Canonizer]:
    """Canonizers of a timm ResNet: BatchNorms merged into the convolutions before them, residual sums split."""
    return [ExactSequentialMergeBatchNorm(), TimmResNetBlockCanonizer()]


def convnext_canonizers() -> list[Canonizer]:
    """Canonizers of a timm ConvNeXt: layer scales merged, residual sums split (it has no BatchNorm)."""
    return [ConvNeXtBlockCanonizer()]


def merged_batch_norms(applied: list[Any]) -> set[int]:
    """``id`` of every BatchNorm merged by the canonizer instances ``applied`` (a composite's handles)."""
    return {id(c.batch_norm) for c in applied if isinstance(c, MergeBatchNorm) and c.batch_norm is not None}
