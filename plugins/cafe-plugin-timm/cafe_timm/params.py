"""Parameters of the backbones of this plugin, validated before timm, torch or any model library is imported."""

from __future__ import annotations

import pathlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import TimmBackboneError

__all__ = ["CHECKPOINT_SUFFIXES", "HFVisionParams", "OpenClipParams", "ReadOut", "TimmConvParams", "TimmParams"]

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")

# Keys of ``model_kwargs`` that have a field of their own, with the field to use instead.
_RESERVED_KWARGS = {
    "pretrained": "pretrained",
    "checkpoint_path": "checkpoint",
    "pretrained_cfg_overlay": "checkpoint",
}


class ReadOut(BaseModel):
    """How the tokens of a ViT backbone are read out after the blocks (shared by its params models).

    Attributes
    ----------
    final_norm : {"none", "last", "all"}
        Where the model's final norm is applied to the tokens: nowhere (the residual stream after the block,
        the default), to the output of the last block only (Hugging Face's ``last_hidden_state``), or to the
        output of every block (timm's ``forward_intermediates(norm=True)``, DINOv2's
        ``get_intermediate_layers``).
    pool_token : bool
        Add the attention-pool head's output (SigLIP's pooled image embedding) as a prefix token ``"pool"``.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    final_norm: Literal["none", "last", "all"] = "none"
    pool_token: bool = False


class _TimmModelParams(BaseModel):
    """Parameters of a backbone built by ``timm.create_model``.

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

    model: str
    pretrained: bool = False
    checkpoint: pathlib.Path | None = None
    img_size: int | None = Field(default=None, gt=0)
    model_kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("model")
    @classmethod
    def _named(cls, model: str) -> str:
        if not model.strip():
            raise TimmBackboneError(f"model must be a timm model name such as 'vit_small_patch16_224', got {model!r}")
        return model

    @model_validator(mode="after")
    def _consistent(self) -> "_TimmModelParams":
        if self.pretrained and self.checkpoint is not None:
            raise TimmBackboneError(
                "pretrained=True and checkpoint are both set, so the weights to use are ambiguous; "
                "keep checkpoint (local weights) or pretrained (timm downloads them), not both"
            )
        for key, field in _RESERVED_KWARGS.items():
            if key in self.model_kwargs:
                raise TimmBackboneError(f"model_kwargs must not contain {key!r}; set the {field!r} parameter instead")
        if self.img_size is not None and "img_size" in self.model_kwargs:
            raise TimmBackboneError("img_size is set both as a parameter and in model_kwargs; keep only one of them")
        if self.checkpoint is not None:
            self.checkpoint = _existing_file(self.checkpoint)
        return self


def _existing_file(checkpoint: pathlib.Path) -> pathlib.Path:
    path = checkpoint.expanduser()
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


class TimmParams(_TimmModelParams, ReadOut):
    """Parameters of the ``timm`` backbone.

    Attributes
    ----------
    model : str
        A timm model name, e.g. ``"vit_small_patch16_224"`` (see ``timm.list_models("vit*")``).
    pretrained : bool
        Let timm fetch the pretrained weights itself (needs network access or a filled hub cache).
    checkpoint : pathlib.Path or None
        A local state dict (``.safetensors``, ``.pth``, ``.pt`` or ``.bin``) to load instead; it may wrap the
        weights under ``"state_dict"`` or ``"model"``. timm converts OpenAI/open_clip CLIP and DINOv2 torch-hub
        layouts. Exclusive with ``pretrained``.
    img_size : int or None
        Square input size; the position embedding of a checkpoint trained at another size is resampled.
    model_kwargs : dict
        Further keyword arguments of ``timm.create_model``.
    final_norm, pool_token
        See :class:`ReadOut`.
    """


class TimmConvParams(_TimmModelParams):
    """Parameters of the ``timm_conv`` backbone: those of :class:`TimmParams` but the read-out, plus the heatmap
    patch size.

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


class OpenClipParams(ReadOut):
    """Parameters of the ``open_clip`` backbone (the vision tower of an open_clip model).

    Attributes
    ----------
    model : str or None
        An open_clip model name (``"ViT-B-16"``, ``"ViT-B-16-quickgelu"``, ``"ViT-L-14"``,
        ``"ViT-B-16-SigLIP"``...; ``open_clip.list_models()``) or ``"hf-hub:org/repo"``.
    path : pathlib.Path or None
        Instead of ``model``: a folder with ``open_clip_config.json`` and the weights (open_clip's
        ``local-dir:``); a relative path is taken from the spec's folder.
    pretrained : str or None
        An open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b88k"``, ``"datacomp_xl_s13b_b90k"``...):
        open_clip loads the weights itself, from its cache or the network. Only with a built-in ``model`` name.
    checkpoint : pathlib.Path or None
        A local file with the weights, loaded by open_clip's ``load_checkpoint``: the state dict of the whole
        open_clip model (``visual.*`` keys, as open_clip saves it), or of its vision tower only. Exclusive with
        ``pretrained``; it replaces the weights of a ``path`` or ``hf-hub:`` model.
    img_size : int or None
        Square input size (open_clip's ``force_image_size``); the position embedding of the weights is
        resampled by open_clip.
    force_quick_gelu : bool or None
        Use QuickGELU in the MLPs. ``None`` (the default) follows the record of the pretrained tag (OpenAI's
        weights were trained with QuickGELU) and otherwise the model's config (``*-quickgelu`` names); OpenAI
        weights from a ``checkpoint`` file need ``True`` or a ``-quickgelu`` name.
    final_norm, pool_token
        See :class:`ReadOut` (``final_norm`` applies open_clip's ``ln_post``).
    """

    model: str | None = None
    path: pathlib.Path | None = None
    pretrained: str | None = None
    checkpoint: pathlib.Path | None = None
    img_size: int | None = Field(default=None, gt=0)
    force_quick_gelu: bool | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "OpenClipParams":
        _exactly_one_source(self.model, self.path, "an open_clip model name such as 'ViT-B-16', or 'hf-hub:org/repo'",
                            "a folder with open_clip_config.json")
        if self.model is not None and self.model.startswith("local-dir:"):
            raise TimmBackboneError(
                f"model {self.model!r} names a folder; give it as path = {self.model[len('local-dir:'):]!r}, "
                "so that a relative path is taken from the spec's folder"
            )
        if self.path is not None:
            self.path = _saved_folder(self.path, "open_clip_config.json", "give a folder saved by open_clip (config "
                                      "and weights), or a built-in model name such as 'ViT-B-16' as model")
        if self.pretrained is not None and self.checkpoint is not None:
            raise TimmBackboneError(
                "pretrained and checkpoint are both set, so the weights to use are ambiguous; keep checkpoint "
                "(a local file) or pretrained (an open_clip tag), not both"
            )
        if self.pretrained is not None and (self.path is not None or self.model.startswith("hf-hub:")):
            raise TimmBackboneError(
                f"this model names its own weights, so pretrained={self.pretrained!r} would be ignored; remove "
                "pretrained (or replace the weights with checkpoint), or use a built-in model name such as "
                "'ViT-B-16' with it"
            )
        if self.checkpoint is not None:
            self.checkpoint = _existing_file(self.checkpoint)
        return self


class HFVisionParams(ReadOut):
    """Parameters of the ``hf_vision`` backbone (a Hugging Face ``transformers`` vision encoder).

    Attributes
    ----------
    model : str or None
        A hub id such as ``"openai/clip-vit-base-patch16"`` or ``"facebook/dinov2-base"``, read through the
        Hugging Face cache (or the network). Supported: CLIP (``CLIPVisionModel``, or the vision tower of a
        ``CLIPModel``), DINOv2 (``Dinov2Model``), DINOv2 with registers (``Dinov2WithRegistersModel``), SigLIP
        (``SiglipVisionModel`` or the tower of a ``SiglipModel``) and ViT (``ViTModel``).
    path : pathlib.Path or None
        Instead of ``model``: a folder written by ``save_pretrained`` (``config.json``, the weights, optionally
        ``preprocessor_config.json``); a relative path is taken from the spec's folder.
    img_size : int or None
        Square input size; default: the output size of the image processor saved with the model, else
        ``image_size`` of its config. The position embedding is interpolated to it as the library does.
    final_norm, pool_token
        See :class:`ReadOut`: ``final_norm = "last"`` gives ``last_hidden_state`` (with the final LayerNorm
        where the model has one on its tokens: DINOv2, SigLIP, ViT; CLIP's is applied to the pooled token
        only), ``pool_token`` SigLIP's ``pooler_output``.
    """

    model: str | None = None
    path: pathlib.Path | None = None
    img_size: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> "HFVisionParams":
        _exactly_one_source(self.model, self.path, "a hub id such as 'facebook/dinov2-base'",
                            "a folder written by save_pretrained")
        if self.model is not None and (self.model.startswith(("/", ".", "~")) or self.model.count("/") > 1):
            raise TimmBackboneError(
                f"model {self.model!r} looks like a folder; give it as path, so that a relative path is taken "
                "from the spec's folder (model is a hub id such as 'facebook/dinov2-base')"
            )
        if self.path is not None:
            self.path = _saved_folder(self.path, "config.json", "give a folder written by "
                                      "model.save_pretrained(folder), or a hub id as model")
        return self


def _exactly_one_source(model: str | None, path: pathlib.Path | None, model_kind: str, path_kind: str) -> None:
    """Refuse params that name both or neither of a model (``model_kind``) and a saved folder (``path_kind``)."""
    if (model is None or not model.strip()) == (path is None):
        raise TimmBackboneError(f"give exactly one of model ({model_kind}) and path ({path_kind})")


def _saved_folder(path: pathlib.Path, marker: str, fix: str) -> pathlib.Path:
    """``path`` with ``~`` expanded, refused unless it holds the file ``marker`` that saving a model writes."""
    path = path.expanduser()
    if not (path / marker).is_file():
        raise TimmBackboneError(f"path '{path}' has no {marker}; {fix}")
    return path
