"""The vision tower of an open_clip model (OpenAI CLIP, LAION, DataComp, SigLIP...) as a cafe backbone."""

from __future__ import annotations

import difflib
import pathlib
from typing import Any

import torch

from .checkpoint import read_state_dict
from .errors import TimmBackboneError
from .from_open_clip import vit_from_open_clip
from .preprocess import ImagePreprocessor
from .vit import TimmViT

__all__ = ["OpenClipViT"]

_SCHEMAS = ("hf-hub:", "local-dir:")


class OpenClipViT(TimmViT):
    """The vision tower of an open_clip model, read at the output of one block.

    open_clip builds the model and loads its weights itself (a pretrained tag from its cache or the network,
    a ``hf-hub:`` or ``local-dir:`` model, or a local file); the tower is then converted into the timm
    ``VisionTransformer`` that computes the same tokens (:func:`cafe_timm.from_open_clip.vit_from_open_clip`),
    so that ``forward_to(x, L)`` equals the output of open_clip's ``transformer.resblocks[L]`` (the tensor a
    forward hook on that block records) and everything written for timm ViTs, the LRP rules included, applies.
    Images are preprocessed by open_clip's own evaluation transform (resize, centre crop, its mean and std).

    Parameters
    ----------
    model : str, optional
        open_clip model name (``"ViT-B-16"``, ``"ViT-B-16-quickgelu"``, ``"ViT-B-16-SigLIP"``...),
        ``"hf-hub:org/repo"`` or ``"local-dir:/path"``.
    path : path-like, optional
        Instead of ``model``: a folder with ``open_clip_config.json`` and the weights.
    pretrained : str, optional
        open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b88k"``...).
    checkpoint : path-like, optional
        Local weights, in place of the model's own: the state dict of the whole open_clip model (read by
        open_clip's ``load_checkpoint``) or of its vision tower.
    img_size : int, optional
        Square input size (open_clip's ``force_image_size``).
    force_quick_gelu : bool, optional
        QuickGELU in the MLPs; by default as the pretrained tag records (OpenAI weights) or the name says.
    final_norm, pool_token
        See :class:`cafe_timm.vit.TimmViT` (the final norm is ``ln_post``; the pool token exists for towers
        with an attention-pool head, the SigLIP models).

    Raises
    ------
    TimmBackboneError
        If open_clip is not installed, does not know the model, cannot fetch or load the weights, or the tower
        is not a ViT this backbone converts.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        path: pathlib.Path | str | None = None,
        pretrained: str | None = None,
        checkpoint: pathlib.Path | str | None = None,
        img_size: int | None = None,
        force_quick_gelu: bool | None = None,
        final_norm: str = "none",
        pool_token: bool = False,
    ) -> None:
        name = model if path is None else f"local-dir:{path}"
        clip = _create(name, pretrained, checkpoint, img_size, force_quick_gelu)
        visual = clip.visual
        net = vit_from_open_clip(visual, name)
        self.pretrained, self.checkpoint = pretrained, checkpoint
        self._adopt(net, name, final_norm=final_norm, pool_token=pool_token)
        self._preprocess = _preprocessor(visual, self.image_size)


def _create(
    model: str,
    pretrained: str | None,
    checkpoint: pathlib.Path | str | None,
    img_size: int | None,
    force_quick_gelu: bool | None,
) -> torch.nn.Module:
    open_clip = _import_open_clip()
    if not model.startswith(_SCHEMAS) and open_clip.get_model_config(model) is None:
        close = difflib.get_close_matches(model, open_clip.list_models(), n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise TimmBackboneError(
            f"unknown open_clip model {model!r}.{hint} Use a name from open_clip.list_models(), or "
            "model = 'hf-hub:org/repo' or path = folder for a model with its own config"
        )
    quick_gelu = force_quick_gelu
    if quick_gelu is None:
        tag = open_clip.get_pretrained_cfg(model, pretrained) if pretrained else {}
        quick_gelu = bool(tag.get("quick_gelu", False))
    # The text tower is never used: no weights are fetched for it.
    kwargs: dict[str, Any] = {"force_quick_gelu": quick_gelu, "pretrained_text": False}
    if img_size is not None:
        kwargs["force_image_size"] = img_size
    tower = _tower_state(checkpoint)
    try:
        if checkpoint is None:
            clip = open_clip.create_model(model, pretrained=pretrained, **kwargs)
        else:
            clip = open_clip.create_model(model, load_weights=False, **kwargs)
            if tower is None:  # the whole model's weights: open_clip's own loading and conversions
                open_clip.load_checkpoint(clip, str(checkpoint))
    except Exception as exc:
        raise TimmBackboneError(_creation_message(model, pretrained, checkpoint, exc)) from exc
    if tower is not None:
        _load_tower(clip.visual, tower, checkpoint, model)
    return clip.eval()


def _import_open_clip():
    try:
        import open_clip
    except ImportError as exc:
        raise TimmBackboneError(
            "the open_clip backbone needs the open_clip_torch package: pip install open_clip_torch "
            "(or pip install 'cafe-plugin-timm[open_clip]')"
        ) from exc
    return open_clip


def _tower_state(checkpoint: pathlib.Path | str | None) -> dict[str, torch.Tensor] | None:
    """The state dict of ``checkpoint`` if it holds a vision tower only (no ``visual.`` keys), else None."""
    if checkpoint is None:
        return None
    state = read_state_dict(pathlib.Path(checkpoint))
    return None if any(k.startswith(("visual.", "module.visual.")) for k in state) else state


def _load_tower(visual: torch.nn.Module, state: dict, checkpoint: pathlib.Path | str, model: str) -> None:
    expected = visual.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in expected if k in state and state[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        raise TimmBackboneError(
            f"checkpoint '{checkpoint}' fits neither open_clip model {model!r} (no 'visual.' keys) nor its vision "
            f"tower (missing {missing[:5]}, unexpected {unexpected[:5]}, mis-shaped {shapes[:5]}); check the model "
            "name and img_size against the weights"
        )
    visual.load_state_dict(state, strict=True)


def _creation_message(model: str, pretrained: str | None, checkpoint: Any, exc: Exception) -> str:
    cause = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'no details'}"
    if checkpoint is not None:
        return (
            f"open_clip could not load checkpoint '{checkpoint}' into {model!r} ({cause}); check that the file "
            "holds this model's weights and that img_size matches them"
        )
    if pretrained is not None or model.startswith("hf-hub:"):
        return (
            f"open_clip could not load the weights of {model!r} (pretrained={pretrained!r}; {cause}); without "
            "network access, save the weights to a file and pass it as checkpoint, or check the tag against "
            "open_clip.list_pretrained_tags_by_model(model)"
        )
    return f"open_clip could not build {model!r} ({cause})"


def _preprocessor(visual: torch.nn.Module, image_size: tuple[int, int]) -> ImagePreprocessor:
    """open_clip's evaluation transform of the tower, for PIL images, and its mean and std for tensors."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    config = PreprocessCfg(**{**getattr(visual, "preprocess_cfg", {}), "size": image_size})
    return ImagePreprocessor(image_size, config.mean, config.std, image_transform_v2(config, is_train=False))
