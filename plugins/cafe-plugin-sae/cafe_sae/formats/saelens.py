"""SAELens checkpoints: a folder with ``cfg.json`` and ``sae_weights.safetensors``.

Tensors: ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]`` and, by ``architecture``:

=============  ==================================  ===============================================
architecture   tensors                             latents (``x = norm(h) - b_dec * apply_b_dec``)
=============  ==================================  ===============================================
``standard``   ``b_enc``                           ``ReLU(x W_enc + b_enc)``
``topk``       ``b_enc``                           ``ReLU(TopK_k(pre))``, ``pre = x W_enc + b_enc``,
                                                   times ``||W_dec[j]||`` with ``rescale_acts_by_decoder_norm``
``jumprelu``   ``b_enc``, ``threshold``            ``ReLU(pre) * [pre > threshold]``
``gated``      ``b_gate``, ``r_mag``, ``b_mag``    ``[x W_enc + b_gate > 0] * ReLU(x (W_enc exp(r_mag)) + b_mag)``
=============  ==================================  ===============================================

``normalize_activations``: ``none``; ``layer_norm`` (``(h - mean) / (std_unbiased + 1e-5)``);
``constant_norm_rescale`` (``h sqrt(d_in) / ||h||``); ``expected_average_only_in`` (``h`` times the
``scaling_factor`` of the ``activation_scaler.json`` SAELens' trainer writes beside unfinished checkpoints; at the
end of training SAELens folds it into the weights and saves ``none``). BatchTopK trainings are saved as
``jumprelu``. The layer and site come from ``metadata.hook_name`` (``blocks.9.hook_resid_post``; SAELens 6), or
from the top-level ``hook_name``/``hook_point`` and ``hook_layer`` of older configs, which are read the way
SAELens reads them (``activation_fn`` ``topk`` with ``activation_fn_kwargs.k`` is a TopK SAE, a boolean
``normalize_activations`` means ``expected_average_only_in``). Tensors are cast to the config's ``dtype``, as
SAELens does.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..sites import site_of_hook
from .recipe import Reading, Recipe

__all__ = ["CONFIG_NAME", "NAME", "WEIGHTS_NAME", "read"]

NAME = "saelens"
CONFIG_NAME = "cfg.json"
WEIGHTS_NAME = "sae_weights.safetensors"
SCALER_NAME = "activation_scaler.json"

_ARCHITECTURES = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated"}
_NORMALIZATIONS = {"none": "none", "layer_norm": "layer_norm", "constant_norm_rescale": "constant_norm"}
_DTYPES = {
    name: dtype
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    for name in (str(dtype).removeprefix("torch."), str(dtype))
}


def read(location: Path, reading: Reading) -> Recipe:
    """Read the SAELens checkpoint in folder ``location`` (or the folder of the file ``location``)."""
    from ..io import read_safetensors

    folder = location if location.is_dir() else location.parent
    cfg = _modern_config(reading.json(folder / CONFIG_NAME))
    tensors, _ = read_safetensors(folder / WEIGHTS_NAME)
    _drop_unit_scaling_factor(tensors, reading)

    architecture = _ARCHITECTURES.get(str(cfg["architecture"]))
    if architecture is None:
        hint = ("a training checkpoint: SAELens saves the finished SAE as 'jumprelu'"
                if "batchtopk" in str(cfg["architecture"]) else "not an SAE architecture cafe reads")
        raise reading.refuse(
            f"its cfg.json has architecture {cfg['architecture']!r}, {hint}",
            f"use an SAE of architecture {', '.join(map(repr, _ARCHITECTURES))}",
        )
    architecture = reading.settle("architecture", architecture)
    subtract = reading.settle("subtract_decoder_bias", bool(cfg["apply_b_dec_to_input"]))
    d_in, d_sae = (int(reading.need(cfg, key, CONFIG_NAME)) for key in ("d_in", "d_sae"))
    shapes: dict[str, tuple[int, ...]] = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    shapes.update(
        {"b_gate": (d_sae,), "r_mag": (d_sae,), "b_mag": (d_sae,)} if architecture == "gated" else {"b_enc": (d_sae,)}
    )
    if architecture == "jumprelu":
        shapes["threshold"] = (d_sae,)
    found = reading.take(tensors, shapes, f"a SAELens {cfg['architecture']} SAE")

    b_dec = found["b_dec"]
    native = {
        "W_e": found["W_enc"].t(),
        "b_d": b_dec if subtract else torch.zeros_like(b_dec),
        "W_d": found["W_dec"].t(),
        "b_h": b_dec,
    }
    if architecture == "gated":
        native.update(b_gate=found["b_gate"], r_mag=found["r_mag"], b_mag=found["b_mag"])
    else:
        native["b_e"] = found["b_enc"]
    options: dict[str, Any] = {}
    if architecture == "jumprelu":
        native["threshold"] = found["threshold"]
        options["threshold_inclusive"] = False
    if architecture == "topk":
        options.update(
            k=reading.settle("k", int(reading.need(cfg, "k", CONFIG_NAME))),
            relu_after_topk=True,
            rescale_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)),
        )
    options.update(_normalization(cfg, folder, d_in, native, reading))

    hook = cfg["hook_name"]
    layer, site = site_of_hook(hook) if hook else (None, None)
    block = re.match(r"^blocks\.(\d+)\.", hook or "")
    if block and cfg.get("hook_layer") is not None and int(block.group(1)) != int(cfg["hook_layer"]):
        raise reading.refuse(
            f"its cfg.json contradicts itself: hook {hook!r} but hook_layer {cfg['hook_layer']!r}",
            "correct cfg.json",
        )
    if layer is None and cfg.get("hook_layer") is not None:
        layer = int(cfg["hook_layer"])
    dtype = _DTYPES.get(str(cfg.get("dtype", "float32")))
    if dtype is None:
        raise reading.refuse(f"its cfg.json has dtype {cfg.get('dtype')!r}", f"use one of {sorted(_DTYPES)}")
    return Recipe(
        architecture=architecture,
        tensors=native,
        options=options,
        layer=layer,
        site=site,
        hook=hook,
        dtype=dtype,
        extra={"source": {"format": NAME, "path": str(location), "config": cfg["raw"]}},
    )


def _modern_config(raw: dict[str, Any]) -> dict[str, Any]:
    """The fields cafe needs, from a SAELens 6 config or an older one (read as SAELens reads it)."""
    metadata = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    version = raw.get("sae_lens_version") or metadata.get("sae_lens_version")
    major = re.match(r"\d+", str(version or ""))
    old = major is None or int(major.group()) < 6
    cfg = dict(raw)
    if old:
        for before, after in (("hook_point", "hook_name"), ("activation_fn_str", "activation_fn")):
            if before in cfg and after not in cfg:
                cfg[after] = cfg.pop(before)
        cfg.setdefault("architecture", "standard")
        cfg.setdefault("apply_b_dec_to_input", True)
        kwargs = cfg.get("activation_fn_kwargs") or {}
        if cfg.get("activation_fn") == "topk" and kwargs.get("k") is not None:
            cfg["architecture"], cfg["k"] = "topk", kwargs["k"]
        if isinstance(cfg.get("normalize_activations"), bool):
            cfg["normalize_activations"] = "expected_average_only_in" if cfg["normalize_activations"] else "none"
        if cfg.get("hook_layer") is None and cfg.get("hook_point_layer") is not None:
            cfg["hook_layer"] = cfg["hook_point_layer"]
    cfg["hook_name"] = metadata.get("hook_name") or cfg.get("hook_name")
    if cfg.get("normalize_activations") is None:
        cfg["normalize_activations"] = "none"
    cfg.setdefault("apply_b_dec_to_input", True)
    cfg["raw"] = raw
    return cfg


def _drop_unit_scaling_factor(tensors: dict[str, torch.Tensor], reading: Reading) -> None:
    """Older SAELens files may hold a ``scaling_factor`` tensor; SAELens drops it when it is all ones."""
    factor = tensors.get("scaling_factor")
    if factor is None:
        return
    if not torch.equal(factor, torch.ones_like(factor)):
        raise reading.refuse(
            "it holds a fine-tuning 'scaling_factor' that is not all ones, which current SAELens cannot load either",
            "fold it into W_dec (W_dec * scaling_factor[:, None]) and save the SAE again",
        )
    del tensors["scaling_factor"]


def _normalization(
    cfg: dict[str, Any], folder: Path, d_in: int, native: dict[str, torch.Tensor], reading: Reading
) -> dict[str, Any]:
    kind = cfg["normalize_activations"]
    if kind in _NORMALIZATIONS:
        return {"normalization": _NORMALIZATIONS[kind]}
    if kind != "expected_average_only_in":
        raise reading.refuse(
            f"its cfg.json has normalize_activations {kind!r}",
            "use an SAE with normalize_activations 'none', 'layer_norm', 'constant_norm_rescale' or "
            "'expected_average_only_in'",
        )
    recorded = None
    scaler = folder / SCALER_NAME
    if scaler.is_file():
        factor = reading.json(scaler).get("scaling_factor")
        recorded = None if factor is None else 1.0 / float(factor)
    requested = reading.optional("input_scalar")
    if recorded is not None and requested is not None and abs(requested - recorded) > 1e-6 * abs(recorded):
        raise reading.refuse(
            f"the params give input_scalar = {requested!r} but {scaler} records scaling_factor "
            f"{1.0 / recorded!r}, i.e. input_scalar = {recorded!r}",
            "remove input_scalar from the SAE params",
        )
    scalar = recorded if recorded is not None else requested
    if scalar is None:
        raise reading.refuse(
            "its cfg.json has normalize_activations 'expected_average_only_in' but the folder has no "
            f"{SCALER_NAME} with the scaling factor it was trained with",
            f"copy {SCALER_NAME} from the training checkpoint beside cfg.json, or give input_scalar = "
            "1 / scaling_factor in the SAE params (activations are divided by it)",
        )
    native["input_mean"] = torch.zeros(d_in, dtype=native["W_e"].dtype)
    return {"normalization": "shift_scale", "input_scalar": float(scalar)}
