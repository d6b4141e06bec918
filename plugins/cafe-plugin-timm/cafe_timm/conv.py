"""A timm ResNet or ConvNeXt seen as a :class:`cafe_core.protocols.Backbone`, stage by stage.

Layers are the model's stages (ResNet ``layer1..layer4``, ConvNeXt ``stages[0..3]``) and a token is one spatial
position of a stage's output map. Two grids are involved:

* the *token grid* of stage ``L``, ``layer_grid(L) = image_size / stage_strides[L]``: ``forward_to(x, L)``
  returns that map flattened row-major, ``[B, h * w, stage_widths[L]]``, so a target position indexes it;
* the *heatmap grid*, ``grid_size = image_size / patch_size``: the input patches attributions are summed over,
  the same for every layer.
"""

from __future__ import annotations

import pathlib
from typing import Any, Sequence

import torch
from torch import nn

from .checkpoint import load_checkpoint
from .common import TimmModel
from .errors import TimmBackboneError
from .models import conv_classes, create_convnet
from .preprocess import ImagePreprocessor
from .vit import TimmViT, _pair

__all__ = ["TimmConvNet"]

_CONV_KWARGS = "layers, channels, stem_width, stem_type, depths, dims, conv_mlp, num_classes..."
_check_index = TimmViT._check_index


class TimmConvNet(TimmModel):
    """A timm ResNet or ConvNeXt, read at the output of one stage.

    ``forward_to(x, L)`` runs the stem and stages ``0..L`` only and returns the output map of stage ``L``
    flattened row-major: ``[B, h * w, stage_widths[L]]`` with ``(h, w) = layer_grid(L)``. There are no prefix
    tokens. Heatmaps are over the input patches of ``patch_size`` pixels (``grid_size`` of them), whatever the
    layer. The model is put in eval mode (BatchNorm uses its running statistics); its parameters keep their
    ``requires_grad``.

    Parameters
    ----------
    model : str
        timm model name: a ResNet (``"resnet18"``, ``"resnet26d"``, ``"resnet50"``, ``"resnet10t"``...) or a
        ConvNeXt (``"convnext_atto"``, ``"convnext_femto"``, ``"convnext_pico"``, ``"convnext_nano"``,
        ``"convnext_tiny"``...).
    pretrained : bool
        Let timm fetch the pretrained weights (network access or a filled hub cache).
    checkpoint : path-like, optional
        Local state dict (``.safetensors``, ``.pth``, ``.pt``, ``.bin``) to load; exclusive with ``pretrained``.
    img_size : int, optional
        Square input size (default: the model's pretrained input size); a multiple of every stage's stride.
    patch_size : int, optional
        Side of the square input patches of the heatmaps (default: the stride of the deepest stage); it must
        divide ``img_size``.
    model_kwargs : dict, optional
        Further keyword arguments of ``timm.create_model``.

    Attributes
    ----------
    model : timm.models.resnet.ResNet or timm.models.convnext.ConvNeXt
        The module, in eval mode.
    model_name : str
        The timm name it was created from.
    depth : int
        Number of stages.
    width : int
        Channels of the deepest stage (the token width of layer ``depth - 1``; see ``stage_widths``).
    stage_names : tuple of str
        Module name of each stage (``"layer1"``... or ``"stages.0"``...).
    stage_widths, stage_strides : tuple of int
        Channels and input pixels per map position of each stage's output.
    image_size, patch_size, grid_size : tuple of int
        ``(H, W)`` input size, ``(ph, pw)`` pixels per heatmap patch and ``(gh, gw)`` heatmap patches per
        column and row.
    prefix_tokens : tuple of str
        ``()``: a conv net has no class or register token.

    Raises
    ------
    TimmBackboneError
        For a model that is not a timm ResNet or ConvNeXt, weights that cannot be loaded, or an image size
        that the strides or the patch size do not divide. The settings themselves are checked by
        :class:`cafe_timm.params.TimmConvParams`.
    """

    prefix_tokens: tuple[str, ...] = ()

    def __init__(
        self,
        model: str,
        *,
        pretrained: bool = False,
        checkpoint: pathlib.Path | str | None = None,
        img_size: int | None = None,
        patch_size: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        model_kwargs = dict(model_kwargs or {})
        net = create_convnet(model, pretrained=pretrained, model_kwargs=model_kwargs)
        if checkpoint is not None:
            load_checkpoint(net, checkpoint, model, converter=_converter(net), kwargs_hint=_CONV_KWARGS)
        net.eval()

        self.model = net
        self.model_name = model
        self.checkpoint = checkpoint
        self._stem_names, self.stage_names = _layout(net)
        info = {entry["module"]: entry for entry in net.feature_info}
        self.stage_widths = tuple(int(info[name]["num_chs"]) for name in self.stage_names)
        self.stage_strides = tuple(int(info[name]["reduction"]) for name in self.stage_names)
        self.depth = len(self.stage_names)
        self.width = self.stage_widths[-1]
        self.image_size = _pair(img_size) if img_size is not None else _default_size(net)
        _check_divides(self.stage_strides, self.image_size, model, "the stride of its stages")
        patch = int(patch_size) if patch_size is not None else self.stage_strides[-1]
        _check_divides((patch,), self.image_size, model, "the heatmap patch size")
        self.patch_size = (patch, patch)
        self.grid_size = (self.image_size[0] // patch, self.image_size[1] // patch)
        self._preprocess = ImagePreprocessor.for_timm_model(net, self.image_size)

    # Geometry -------------------------------------------------------------------------------------------

    @property
    def num_prefix_tokens(self) -> int:
        """Number of tokens before the map positions: always 0."""
        return 0

    def layer_grid(self, layer: int) -> tuple[int, int]:
        """``(h, w)``: the output map of stage ``layer``, whose positions are that layer's tokens."""
        stride = self.stage_strides[_check_index(layer, self.depth, "layer")]
        return (self.image_size[0] // stride, self.image_size[1] // stride)

    def layer_width(self, layer: int) -> int:
        """Channels ``D`` of the tokens of stage ``layer``."""
        return self.stage_widths[_check_index(layer, self.depth, "layer")]

    def num_tokens(self, layer: int) -> int:
        """Length ``T = h * w`` of the token sequence of stage ``layer``."""
        h, w = self.layer_grid(layer)
        return h * w

    def token_to_cell(self, layer: int, index: int) -> tuple[int, int]:
        """``(row, col)`` in stage ``layer``'s map of token ``index``.

        Raises
        ------
        TimmBackboneError
            If ``index`` is not in ``[0, num_tokens(layer))``.
        """
        index = _check_index(index, self.num_tokens(layer), "token index")
        return divmod(index, self.layer_grid(layer)[1])

    def cell_to_token(self, layer: int, row: int, col: int) -> int:
        """Token index of position ``(row, col)`` of stage ``layer``'s map."""
        h, w = self.layer_grid(layer)
        return _check_index(row, h, "map row") * w + _check_index(col, w, "map column")

    def token_to_patch(self, layer: int, index: int) -> tuple[int, int]:
        """``(row, col)`` of the heatmap patch holding the centre of token ``index``'s cell of input pixels."""
        row, col = self.token_to_cell(layer, index)
        stride = self.stage_strides[layer]
        return (
            min(int((row + 0.5) * stride) // self.patch_size[0], self.grid_size[0] - 1),
            min(int((col + 0.5) * stride) // self.patch_size[1], self.grid_size[1] - 1),
        )

    def forward_to(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """Token activations ``[B, h * w, stage_widths[layer]]``: the output map of stage ``layer``, row-major.

        Runs the stem and stages ``0..layer`` only: never the later stages, the final norm or the head.
        Gradients flow if ``x`` requires them.

        Raises
        ------
        TimmBackboneError
            If ``layer`` is not an int in ``[0, depth)`` or ``x`` is not ``[B, 3, H, W]`` at ``image_size``.
        """
        layer = _check_index(layer, self.depth, "layer")
        self._check_input(x)
        h = x
        # Looked up by name on every call, so that a module replaced on the model is the one that runs.
        for name in self._stem_names + self.stage_names[: layer + 1]:
            h = self.model.get_submodule(name)(h)
        return h.flatten(2).transpose(1, 2)

    def __repr__(self) -> str:
        return (
            f"TimmConvNet({self.model_name!r}, depth={self.depth}, stage_widths={self.stage_widths}, "
            f"stage_strides={self.stage_strides}, image_size={self.image_size}, patch_size={self.patch_size})"
        )


def _layout(net: nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Names of the stem modules, in the order they run, and of the stages."""
    resnet, _ = conv_classes()
    if isinstance(net, resnet):
        # The order of ResNet.forward_features.
        stages = tuple(name for name, _ in net.named_children() if name.startswith("layer"))
        return ("conv1", "bn1", "act1", "maxpool"), stages
    return ("stem",), tuple(f"stages.{i}" for i in range(len(net.stages)))


def _converter(net: nn.Module) -> Any:
    _, convnext = conv_classes()
    if isinstance(net, convnext):
        from timm.models.convnext import checkpoint_filter_fn

        return checkpoint_filter_fn
    return None


def _default_size(net: nn.Module) -> tuple[int, int]:
    size = (getattr(net, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))
    return (int(size[-2]), int(size[-1]))


def _check_divides(sizes: Sequence[int], image_size: tuple[int, int], model: str, what: str) -> None:
    largest = max(sizes)
    if any(side % size for size in sizes for side in image_size):
        raise TimmBackboneError(
            f"image size {image_size} of {model!r} is not a multiple of {what} ({largest}), so the maps would not "
            f"tile the image; set img_size to a multiple of {largest}"
        )
