"""Parameters of the ``timm`` and ``timm_conv`` backbones, validated before timm or torch is imported."""

from __future__ import annotations

import pathlib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import TimmBackboneError

__all__ = ["CHECKPOINT_SUFFIXES", "TimmConvParams", "TimmParams", "check_options"]

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")

# Keys of ``model_kwargs`` that have a field of their own, with the field to use instead.
_RESERVED_KWARGS = {
    "pretrained": "pretrained",
    "checkpoint_path": "checkpoint",
    "pretrained_cfg_overlay": "checkpoint",
}


def check_options(
    model: str,
    pretrained: bool,
    checkpoint: pathlib.Path | str | None,
    img_size: int | None,
    model_kwargs: dict[str, Any],
) -> pathlib.Path | None:
    """Check that the backbone settings agree with each other and that the checkpoint file exists.

    Parameters
    ----------
    model, pretrained, checkpoint, img_size, model_kwargs
        As in :class:`TimmParams`.

    Returns
    -------
    pathlib.Path or None
        The checkpoint path, expanded.

    Raises
    ------
    TimmBackboneError
        With the cause and the fix.
    """
    if not isinstance(model, str) or not model.strip():
        raise TimmBackboneError(
            f"model must be a timm model name such as 'vit_small_patch16_224', got {model!r}"
        )
    if pretrained and checkpoint is not None:
        raise TimmBackboneError(
            "pretrained=True and checkpoint are both set, so the weights to use are ambiguous; "
            "keep checkpoint (local weights) or pretrained (timm downloads them), not both"
        )
    for key, field in _RESERVED_KWARGS.items():
        if key in model_kwargs:
            raise TimmBackboneError(f"model_kwargs must not contain {key!r}; set the {field!r} parameter instead")
    if img_size is not None and "img_size" in model_kwargs:
        raise TimmBackboneError(
            "img_size is set both as a parameter and in model_kwargs; keep only one of them"
        )
    if checkpoint is None:
        return None
    path = pathlib.Path(checkpoint).expanduser()
    if not path.exists():
        raise TimmBackboneError(
            f"checkpoint file '{path}' does not exist; give the path of a local state dict "
            f"({', '.join(CHECKPOINT_SUFFIXES)})"
        )
    if not path.is_file():
        raise TimmBackboneError(
            f"checkpoint '{path}' is not a file; give the path of a state dict file "
            f"({', '.join(CHECKPOINT_SUFFIXES)}), not a folder"
        )
    return path


class TimmParams(BaseModel):
    """Parameters of the ``timm`` backbone.

    Attributes
    ----------
    model : str
        A timm model name, e.g. ``"vit_small_patch16_224"`` (see ``timm.list_models("vit*")``).
    pretrained : bool
        Let timm fetch the pretrained weights itself (needs network access or a filled hub cache).
    checkpoint : pathlib.Path or None
        A local state dict (``.safetensors``, ``.pth``, ``.pt`` or ``.bin``) to load instead; it may wrap the
        weights under ``"state_dict"`` or ``"model"``. Exclusive with ``pretrained``.
    img_size : int or None
        Square input size; the position embedding of a checkpoint trained at another size is resampled.
    model_kwargs : dict
        Further keyword arguments of ``timm.create_model`` (``depth``, ``embed_dim``, ``num_heads``,
        ``patch_size``, ``class_token``, ``reg_tokens``, ``global_pool``, ``num_classes``...).
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(min_length=1)
    pretrained: bool = False
    checkpoint: pathlib.Path | None = None
    img_size: int | None = Field(default=None, gt=0)
    model_kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> "TimmParams":
        self.checkpoint = check_options(
            self.model, self.pretrained, self.checkpoint, self.img_size, self.model_kwargs
        )
        return self


class TimmConvParams(TimmParams):
    """Parameters of the ``timm_conv`` backbone: those of :class:`TimmParams`, plus the heatmap patch size.

    Attributes
    ----------
    model : str
        A timm ResNet or ConvNeXt name, e.g. ``"resnet50"`` or ``"convnext_tiny"``.
    pretrained, checkpoint, model_kwargs
        As in :class:`TimmParams` (``model_kwargs``: ``channels``, ``layers``, ``stem_width``, ``depths``,
        ``dims``, ``output_stride``...).
    img_size : int or None
        Square input size (default: the model's pretrained input size); a multiple of the deepest stage's
        stride.
    patch_size : int or None
        Side in pixels of the square input patches heatmaps are summed over (default: the stride of the
        deepest stage, 32 for the standard models); it must divide ``img_size``.
    """

    patch_size: int | None = Field(default=None, gt=0)
