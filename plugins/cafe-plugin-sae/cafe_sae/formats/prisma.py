"""ViT-Prisma checkpoints: ``config.json`` beside a ``.pt`` of ``{"cfg": <pickled config>, "state_dict": ...}``.

The config is read from ``config.json`` (``VisionModelSAERunnerConfig.save_config``); from the ``.pt`` only the
tensors are read: the pickled config object is replaced by an inert placeholder, never imported or run (see
:mod:`cafe_sae.formats.torch_files`). A ``.pt`` holding the state dict alone is read too.

Tensors: ``W_enc [d_in, d_sae]``, ``b_enc``, ``W_dec [d_sae, d_in]``, ``b_dec``; gated SAEs add ``b_gate``,
``r_mag``, ``b_mag`` (their ``b_enc`` is unused by Prisma's gated encoder and dropped). Latents, with
``x = norm(h) - b_dec`` (``b_dec`` is always subtracted): ``standard`` with ``activation_fn_str`` ``relu``:
``ReLU(x W_enc + b_enc)``; ``topk`` (``activation_fn_kwargs.k``): ``ReLU(TopK_k(...))``; ``gated``:
``[x W_enc + b_gate > 0] * ReLU(x (W_enc exp(r_mag)) + b_mag)``. ``normalize_activations`` defaults to
``layer_norm`` (SAELens' formula) in Prisma, and so here when the config lacks it.

Where the SAE reads: ``hook_point_layer`` and ``layer_subtype`` (``blocks.{layer}.{layer_subtype}``, with the
same block indexing as cafe, see :mod:`cafe_sae.sites`); tokens: ``cls_token_only`` -> ``"cls"``,
``use_patches_only`` -> ``"patch"``, neither -> ``"all"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from ..sites import site_of_hook
from .recipe import Reading, Recipe
from .torch_files import flat_tensors, load_tensors_only

__all__ = ["CONFIG_NAME", "NAME", "looks_like_config", "read", "weights_file"]

NAME = "prisma"
CONFIG_NAME = "config.json"
_NORMALIZATIONS = {"none": "none", "layer_norm": "layer_norm", "constant_norm_rescale": "constant_norm"}
_DTYPES = {
    name: dtype
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    for name in (str(dtype).removeprefix("torch."), str(dtype))
}


def looks_like_config(config: Mapping[str, Any]) -> bool:
    """Whether a ``config.json`` is a ViT-Prisma SAE config."""
    return "hook_point_layer" in config or ("layer_subtype" in config and "d_in" in config)


def weights_file(folder: Path) -> Path | None:
    """The one ``.pt`` file of a Prisma checkpoint folder, or None if there is not exactly one."""
    found = sorted(folder.glob("*.pt"))
    return found[0] if len(found) == 1 else None


def read(location: Path, reading: Reading) -> Recipe:
    """Read the Prisma checkpoint ``location`` (its ``.pt`` file, or the folder holding it and ``config.json``)."""
    folder = location if location.is_dir() else location.parent
    weights = location if location.is_file() and location.suffix != ".json" else weights_file(folder)
    if weights is None:
        raise reading.refuse(
            f"{folder} does not hold exactly one .pt weights file beside config.json",
            "give the path of the .pt file itself",
        )
    config = reading.json(folder / CONFIG_NAME)
    if config.get("is_transcoder"):
        raise reading.refuse("it is a transcoder, not an SAE", "load an SAE checkpoint")
    content = load_tensors_only(weights)
    state = content["state_dict"] if isinstance(content, dict) and "state_dict" in content else content
    tensors = flat_tensors(state, weights, "the state dict of")

    prisma_architecture = str(config.get("architecture", "standard"))
    activation = str(reading.need(config, "activation_fn_str", CONFIG_NAME))
    if prisma_architecture not in ("standard", "gated") or activation not in ("relu", "topk"):
        raise reading.refuse(
            f"its config has architecture {prisma_architecture!r} with activation_fn_str {activation!r}",
            "cafe reads Prisma's standard SAEs with relu or topk, and gated SAEs with relu",
        )
    if prisma_architecture == "gated" and activation != "relu":
        raise reading.refuse("it is a gated SAE with a TopK magnitude", "cafe reads gated SAEs with relu only")
    architecture = "gated" if prisma_architecture == "gated" else activation
    architecture = reading.settle("architecture", architecture)
    reading.settle("subtract_decoder_bias", True)

    d_in = int(reading.need(config, "d_in", CONFIG_NAME))
    d_sae = config.get("d_sae") or d_in * int(reading.need(config, "expansion_factor", CONFIG_NAME))
    d_sae = int(d_sae)
    shapes: dict[str, tuple[int, ...]] = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    ignored: tuple[str, ...] = ()
    if architecture == "gated":
        shapes.update(b_gate=(d_sae,), r_mag=(d_sae,), b_mag=(d_sae,))
        ignored = ("b_enc",)
    else:
        shapes["b_enc"] = (d_sae,)
    found = reading.take(tensors, shapes, f"a Prisma {prisma_architecture} SAE", ignored=ignored)
    native = {"W_e": found["W_enc"].t(), "b_d": found["b_dec"], "W_d": found["W_dec"].t(), "b_h": found["b_dec"]}
    if architecture == "gated":
        native.update(b_gate=found["b_gate"], r_mag=found["r_mag"], b_mag=found["b_mag"])
    else:
        native["b_e"] = found["b_enc"]

    options: dict[str, Any] = {}
    if architecture == "topk":
        kwargs = config.get("activation_fn_kwargs") or {}
        k = reading.need(kwargs, "k", "activation_fn_kwargs of config.json")
        options.update(k=reading.settle("k", int(k)), relu_after_topk=True, rescale_by_decoder_norm=False)
    normalization = str(config.get("normalize_activations", "layer_norm"))
    if normalization not in _NORMALIZATIONS:
        raise reading.refuse(
            f"its config has normalize_activations {normalization!r}",
            f"cafe reads {', '.join(map(repr, _NORMALIZATIONS))}",
        )
    options["normalization"] = _NORMALIZATIONS[normalization]

    layer, site, hook = _place(config, reading)
    return Recipe(
        architecture=architecture,
        tensors=native,
        options=options,
        layer=layer,
        site=site,
        tokens=_tokens(config),
        hook=hook,
        dtype=_dtype(config, reading),
        extra={"source": {"format": NAME, "path": str(location), "config": config}},
    )


def _place(config: Mapping[str, Any], reading: Reading) -> tuple[int | None, str | None, str | None]:
    layer = config.get("hook_point_layer")
    if isinstance(layer, list):
        if len(layer) != 1:
            raise reading.refuse(f"its config names several layers {layer}", "load an SAE of a single layer")
        layer = layer[0]
    if layer is None:
        return None, None, None
    hook = f"blocks.{int(layer)}.{reading.need(config, 'layer_subtype', CONFIG_NAME)}"
    return (*site_of_hook(hook), hook)


def _tokens(config: Mapping[str, Any]) -> str | None:
    if config.get("cls_token_only"):
        return "cls"
    if config.get("use_patches_only"):
        return "patch"
    if "cls_token_only" in config or "use_patches_only" in config:
        return "all"
    return None


def _dtype(config: Mapping[str, Any], reading: Reading) -> torch.dtype:
    value = config.get("dtype", config.get("_dtype", "float32"))
    if isinstance(value, dict):  # {"__type__": "torch.dtype", "value": "torch.float32"}
        value = value.get("value")
    dtype = _DTYPES.get(str(value))
    if dtype is None:
        raise reading.refuse(f"its config has dtype {value!r}", f"use one of {sorted(_DTYPES)}")
    return dtype
