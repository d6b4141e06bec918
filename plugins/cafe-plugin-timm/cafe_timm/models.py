"""Creating timm models from a name (Vision Transformers, ResNets, ConvNeXts), with errors that say what to change."""

from __future__ import annotations

import difflib
from typing import Any

import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from .errors import TimmBackboneError

__all__ = ["CONV_FAMILIES", "create_convnet", "create_vit"]

# The convolutional families the ``timm_conv`` backbone reads stage by stage.
CONV_FAMILIES = ("ResNet", "ConvNeXt")

_NETWORK_ERROR_MODULES = ("huggingface_hub", "requests", "urllib", "urllib3", "http", "socket", "ssl")


def create_vit(
    model: str, *, pretrained: bool = False, img_size: int | None = None, model_kwargs: dict[str, Any] | None = None
) -> VisionTransformer:
    """``timm.create_model`` restricted to Vision Transformers.

    Parameters
    ----------
    model : str
        timm model name.
    pretrained : bool
        Let timm download (or take from its cache) the pretrained weights.
    img_size : int, optional
        Square input size.
    model_kwargs : dict, optional
        Further keyword arguments of ``timm.create_model``.

    Returns
    -------
    timm.models.vision_transformer.VisionTransformer

    Raises
    ------
    TimmBackboneError
        For an unknown name, arguments timm rejects, weights that cannot be fetched, or a model that is not a
        VisionTransformer.
    """
    kwargs = dict(model_kwargs or {})
    if img_size is not None:
        kwargs["img_size"] = img_size
    net = _create(model, pretrained, kwargs, names="timm.list_models('vit*')", arguments="VisionTransformer")
    if not isinstance(net, VisionTransformer):
        raise TimmBackboneError(
            f"timm model {model!r} is a {type(net).__name__}, but the 'timm' backbone supports only timm "
            "VisionTransformer models (e.g. 'vit_small_patch16_224', 'deit3_small_patch16_224', "
            "'vit_small_patch14_reg4_dinov2'); pick one of timm.list_models('vit*') or use a backbone plugin "
            "made for this architecture (the 'timm_conv' backbone reads ResNets and ConvNeXts)"
        )
    return net


def create_convnet(
    model: str, *, pretrained: bool = False, model_kwargs: dict[str, Any] | None = None
) -> torch.nn.Module:
    """``timm.create_model`` restricted to the convolutional families of :data:`CONV_FAMILIES`.

    Parameters
    ----------
    model : str
        timm model name, e.g. ``"resnet50"`` or ``"convnext_tiny"``.
    pretrained : bool
        Let timm download (or take from its cache) the pretrained weights.
    model_kwargs : dict, optional
        Further keyword arguments of ``timm.create_model`` (``channels``, ``layers``, ``depths``, ``dims``...).

    Returns
    -------
    timm.models.resnet.ResNet or timm.models.convnext.ConvNeXt

    Raises
    ------
    TimmBackboneError
        For an unknown name, arguments timm rejects, weights that cannot be fetched, or a model of another
        family.
    """
    families = conv_classes()
    net = _create(
        model,
        pretrained,
        dict(model_kwargs or {}),
        names="timm.list_models('resnet*') or timm.list_models('convnext*')",
        arguments=" or ".join(cls.__name__ for cls in families),
    )
    if not isinstance(net, families):
        raise TimmBackboneError(
            f"timm model {model!r} is a {type(net).__name__}, but the 'timm_conv' backbone supports only timm "
            f"{' and '.join(CONV_FAMILIES)} models (e.g. 'resnet18', 'resnet50', 'convnext_atto', "
            "'convnext_tiny'); use the 'timm' backbone for Vision Transformers"
        )
    return net


def conv_classes() -> tuple[type, ...]:
    """The timm classes of :data:`CONV_FAMILIES`, in that order."""
    from timm.models.convnext import ConvNeXt
    from timm.models.resnet import ResNet

    return (ResNet, ConvNeXt)


def _create(model: str, pretrained: bool, kwargs: dict[str, Any], *, names: str, arguments: str) -> torch.nn.Module:
    if not timm.is_model(model):
        raise TimmBackboneError(_unknown_model_message(model, names))
    try:
        return timm.create_model(model, pretrained=pretrained, **kwargs)
    except Exception as exc:
        if pretrained and _is_download_error(exc):
            raise TimmBackboneError(
                f"timm could not fetch the pretrained weights of {model!r} ({type(exc).__name__}: "
                f"{_first_line(exc)}); without network access, save the weights to a local file and pass it as "
                "checkpoint= (with pretrained=False)"
            ) from exc
        raise TimmBackboneError(
            f"timm.create_model({model!r}, pretrained={pretrained}, **{kwargs!r}) failed "
            f"({type(exc).__name__}: {_first_line(exc)}); check img_size and model_kwargs against the "
            f"arguments of timm's {arguments}"
        ) from exc


def _is_download_error(exc: BaseException) -> bool:
    if isinstance(exc, (OSError, ConnectionError, TimeoutError)):
        return True
    chain: BaseException | None = exc
    while chain is not None:
        if type(chain).__module__.split(".")[0] in _NETWORK_ERROR_MODULES:
            return True
        chain = chain.__cause__ or chain.__context__
    return False


def _unknown_model_message(model: str, names: str) -> str:
    close = difflib.get_close_matches(model, timm.list_models(), n=3, cutoff=0.7)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return (
        f"unknown timm model {model!r}.{hint} Use a name from {names} "
        "(a pretrained tag such as '.augreg_in21k' may follow the name)"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"
