"""A Hugging Face ``transformers`` vision encoder (CLIP, DINOv2, SigLIP, ViT) as a cafe backbone."""

from __future__ import annotations

import pathlib
from typing import Any

import torch

from .errors import TimmBackboneError
from .from_hf import SUPPORTED, vit_from_hf
from .preprocess import ImagePreprocessor
from .vit import TimmViT

__all__ = ["HFVisionViT"]

# config.model_type -> the class that reads the vision encoder (also out of a two-tower checkpoint).
_CLASSES = {
    "clip": "CLIPVisionModel",
    "clip_vision_model": "CLIPVisionModel",
    "dinov2": "Dinov2Model",
    "dinov2_with_registers": "Dinov2WithRegistersModel",
    "siglip": "SiglipVisionModel",
    "siglip_vision_model": "SiglipVisionModel",
    "vit": "ViTModel",
}

# The image processor each family's checkpoints ship (used when a folder has no preprocessor_config.json).
_DEFAULT_PROCESSORS = {
    "CLIPVisionModel": ("CLIPImageProcessor", {}),
    "SiglipVisionModel": ("SiglipImageProcessor", {}),
    "ViTModel": ("ViTImageProcessor", {}),
    "Dinov2Model": ("BitImageProcessor", {
        "size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}, "do_center_crop": True,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "do_convert_rgb": True,
    }),
}
_DEFAULT_PROCESSORS["Dinov2WithRegistersModel"] = _DEFAULT_PROCESSORS["Dinov2Model"]


class HFVisionViT(TimmViT):
    """A Hugging Face vision encoder, read at the output of one block.

    ``transformers`` loads the model (a local folder written by ``save_pretrained``, or a hub id through the
    Hugging Face cache), which is then converted into the timm ``VisionTransformer`` computing the same hidden
    states (:func:`cafe_timm.from_hf.vit_from_hf`): ``forward_to(x, L)`` equals ``hidden_states[L + 1]`` of
    the model's ``output_hidden_states=True`` output (``hidden_states[0]`` is the embeddings), class token,
    registers and patch tokens included. Images are preprocessed by the model's own image processor.

    Parameters
    ----------
    model : str, optional
        A hub id (read through the Hugging Face cache) or a folder.
    path : path-like, optional
        Instead of ``model``: a folder (``config.json``, weights, optionally ``preprocessor_config.json``).
    img_size : int, optional
        Square input size; default: the output size of the image processor saved with the model (224 for
        the DINOv2 checkpoints, whose config says 518), else the config's ``image_size``. The position
        embedding is interpolated as the library does (for CLIP, SigLIP and ViT that is
        ``interpolate_pos_encoding=True`` at another size).
    final_norm, pool_token
        See :class:`cafe_timm.vit.TimmViT`: ``final_norm = "last"`` gives ``last_hidden_state`` (DINOv2, SigLIP,
        ViT; CLIP's ``post_layernorm`` is then applied to every token), ``pool_token`` SigLIP's
        ``pooler_output``.

    Raises
    ------
    TimmBackboneError
        If ``transformers`` is missing, the model cannot be loaded, or its family is not supported.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        path: pathlib.Path | str | None = None,
        img_size: int | None = None,
        final_norm: str = "none",
        pool_token: bool = False,
    ) -> None:
        model = str(path) if path is not None else model
        encoder, processor, saved = _load(model)
        if img_size is not None:
            size = (img_size, img_size)
        else:
            size = _default_size(encoder, processor if saved else None)
        net = vit_from_hf(encoder, size)
        self._adopt(net, model, final_norm=final_norm, pool_token=pool_token)
        self._preprocess = _preprocessor(processor, self.image_size)


def _load(model: str) -> tuple[torch.nn.Module, Any, bool]:
    """The encoder, its image processor, and whether that processor was saved with it."""
    try:
        import transformers
    except ImportError as exc:
        raise TimmBackboneError(
            "the hf_vision backbone needs the transformers package: pip install 'transformers<5' "
            "(or pip install 'cafe-plugin-timm[hf]')"
        ) from exc
    try:
        config = transformers.AutoConfig.from_pretrained(model)
    except Exception as exc:
        raise TimmBackboneError(
            f"cannot read the config of {model!r} ({type(exc).__name__}: {_first_line(exc)}); give a folder written "
            "by save_pretrained or a hub id that is in the Hugging Face cache (or reachable)"
        ) from exc
    name = _CLASSES.get(config.model_type)
    if name is None:
        raise TimmBackboneError(
            f"{model!r} is a {config.model_type!r} model; hf_vision reads {', '.join(SUPPORTED.values())} "
            f"(model types {', '.join(sorted(_CLASSES))}). For another ViT, convert it to timm and use the "
            "'timm' backbone"
        )
    try:
        encoder = getattr(transformers, name).from_pretrained(model)
    except Exception as exc:
        raise TimmBackboneError(
            f"transformers could not load {model!r} as {name} ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    try:
        return encoder.eval(), transformers.AutoImageProcessor.from_pretrained(model), True
    except Exception:  # noqa: BLE001 - no processor saved with the weights: the family's own default
        cls_name, kwargs = _DEFAULT_PROCESSORS[name]
        return encoder.eval(), getattr(transformers, cls_name)(**kwargs), False


def _output_size(processor: Any) -> tuple[int, int] | None:
    """``(H, W)`` of the processor's outputs: its crop if it crops, else a fixed resize, else unknown."""
    crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    for size in (crop, getattr(processor, "size", None)):
        if size and "height" in size and "width" in size:
            return (int(size["height"]), int(size["width"]))
    return None


def _default_size(encoder: torch.nn.Module, processor: Any | None) -> tuple[int, int]:
    size = None if processor is None else _output_size(processor)
    if size is not None:
        return size
    image = encoder.config.image_size
    return (image, image) if isinstance(image, int) else tuple(image)


def _preprocessor(processor: Any, image_size: tuple[int, int]) -> ImagePreprocessor:
    """The library's processor, rescaled to ``image_size`` when it was made for another output size.

    A processor that resizes the shortest edge and crops keeps its ratio of the two (DINOv2's 256 -> 224).
    """
    overrides = {}
    current = _output_size(processor)
    if current is not None and current != tuple(image_size):
        h, w = image_size
        if getattr(processor, "do_center_crop", False):
            edge = processor.size.get("shortest_edge") if processor.size else None
            overrides["crop_size"] = {"height": h, "width": w}
            if edge is not None:
                overrides["size"] = {"shortest_edge": round(edge * h / current[0])}
        else:
            overrides["size"] = {"height": h, "width": w}

    def transform(image: Any) -> torch.Tensor:
        return processor(images=image, return_tensors="pt", **overrides)["pixel_values"][0]

    return ImagePreprocessor(image_size, processor.image_mean, processor.image_std, transform)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"
