"""dictionary_learning checkpoints: a folder with ``config.json`` and ``ae.pt`` (a state dict).

``config.json`` holds ``{"trainer": {"dict_class": ..., "layer": ..., "submodule_name": ..., "k": ...}, ...}``.
By ``dict_class`` (``W h`` is ``encoder(h)`` of an ``nn.Linear``, weight ``[dict_size, activation_dim]``):

* ``AutoEncoder`` (``bias``, ``encoder.weight/bias``, ``decoder.weight``): ``ReLU(W (h - bias) + b)``.
* ``AutoEncoderNew`` (``encoder.weight/bias``, ``decoder.weight/bias``): ``ReLU(W h + b)``.
* ``GatedAutoEncoder`` (``decoder_bias``, ``encoder.weight``, ``r_mag``, ``gate_bias``, ``mag_bias``,
  ``decoder.weight``): gated, with ``x = h - decoder_bias``.
* ``AutoEncoderTopK`` (``b_dec``, ``encoder.weight/bias``, ``decoder.weight``, buffers ``k`` and ``threshold``,
  the latter unused by ``encode``): ``TopK_k(ReLU(W (h - b_dec) + b))``.
* ``BatchTopKSAE`` (as TopK): ``r * [r > threshold]`` with ``r = ReLU(W (h - b_dec) + b)``.
* ``MatryoshkaBatchTopKSAE`` (``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``, ``k``, ``threshold``, ``group_sizes``):
  as BatchTopK.
* ``JumpReluAutoEncoder`` (``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``, ``threshold``):
  ``ReLU(pre) * [pre > threshold]``, ``pre = h W_enc + b_enc``: ``b_dec`` is *not* subtracted.

The decoder is used as saved: ``from_pretrained`` would rescale an ``AutoEncoder`` to unit-norm decoder columns,
which scales its latents. ``norm_factor`` in the config is already folded into the saved biases (the library
calls ``scale_biases(norm_factor)`` before saving), so it is not applied again. The layer is ``trainer.layer``;
the site is read from ``submodule_name`` where it names one (``mlp``, ``attn``, ``resid_pre``), else the
layer's output (``resid_post``), which is what the library's ``get_submodule`` hooks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .recipe import Reading, Recipe, matrix
from .torch_files import flat_tensors, load_weights

__all__ = ["CONFIG_NAME", "NAME", "WEIGHTS_NAME", "looks_like_config", "read"]

NAME = "dictionary_learning"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "ae.pt"
_CLASSES = (
    "AutoEncoder", "AutoEncoderNew", "GatedAutoEncoder", "AutoEncoderTopK", "BatchTopKSAE",
    "MatryoshkaBatchTopKSAE", "JumpReluAutoEncoder",
)


def looks_like_config(config: dict[str, Any]) -> bool:
    """Whether a ``config.json`` is a dictionary_learning trainer config."""
    return isinstance(config.get("trainer"), dict) and "dict_class" in config["trainer"]


def read(location: Path, reading: Reading) -> Recipe:
    """Read the dictionary_learning checkpoint ``location`` (the folder, or its ``ae.pt``)."""
    folder = location if location.is_dir() else location.parent
    weights = location if location.is_file() and location.suffix != ".json" else folder / WEIGHTS_NAME
    config = reading.json(folder / CONFIG_NAME)
    trainer = config.get("trainer") if isinstance(config.get("trainer"), dict) else {}
    dict_class = str(reading.need(trainer, "dict_class", "the trainer section of config.json"))
    if dict_class not in _CLASSES:
        raise reading.refuse(f"its config names dict_class {dict_class!r}", f"cafe reads {', '.join(_CLASSES)}")
    tensors = flat_tensors(load_weights(weights, weights), weights, "the state dict of")
    what = f"a dictionary_learning {dict_class}"

    if dict_class in ("MatryoshkaBatchTopKSAE", "JumpReluAutoEncoder"):
        d_in, d_sae = matrix(tensors, "W_enc", reading).shape
        shapes: dict[str, tuple[int, ...]] = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in),
                                              "b_dec": (d_in,)}
    else:
        d_sae, d_in = matrix(tensors, "encoder.weight", reading).shape
        shapes = {"encoder.weight": (d_sae, d_in), "decoder.weight": (d_in, d_sae)}
    if dict_class == "AutoEncoder":
        shapes.update({"encoder.bias": (d_sae,), "bias": (d_in,)})
    elif dict_class == "AutoEncoderNew":
        shapes.update({"encoder.bias": (d_sae,), "decoder.bias": (d_in,)})
    elif dict_class == "GatedAutoEncoder":
        shapes.update({"decoder_bias": (d_in,), "r_mag": (d_sae,), "gate_bias": (d_sae,), "mag_bias": (d_sae,)})
    elif dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):
        shapes.update({"encoder.bias": (d_sae,), "b_dec": (d_in,), "k": (), "threshold": ()})
    elif dict_class == "MatryoshkaBatchTopKSAE":
        groups = tensors.get("group_sizes")
        shapes.update({"k": (), "threshold": (), "group_sizes": tuple(groups.shape) if groups is not None else (1,)})
    else:
        shapes["threshold"] = (d_sae,)
    found = reading.take(tensors, shapes, what)

    if "W_enc" in found:
        w_e, b_e, w_d, bias = found["W_enc"].t(), found["b_enc"], found["W_dec"].t(), found["b_dec"]
    elif dict_class == "GatedAutoEncoder":
        w_e, b_e, w_d, bias = found["encoder.weight"], None, found["decoder.weight"], found["decoder_bias"]
    elif dict_class == "AutoEncoderNew":
        w_e, b_e, w_d, bias = found["encoder.weight"], found["encoder.bias"], found["decoder.weight"], None
    else:
        bias = found["bias"] if dict_class == "AutoEncoder" else found["b_dec"]
        w_e, b_e, w_d = found["encoder.weight"], found["encoder.bias"], found["decoder.weight"]
    recorded_subtract = dict_class not in ("JumpReluAutoEncoder", "AutoEncoderNew")
    subtract = reading.settle("subtract_decoder_bias", recorded_subtract)
    zeros = torch.zeros(d_in, dtype=w_e.dtype)
    b_h = found["decoder.bias"] if dict_class == "AutoEncoderNew" else bias
    native = {"W_e": w_e, "b_d": bias if subtract and bias is not None else zeros, "W_d": w_d, "b_h": b_h}

    architecture, options = _architecture(dict_class, found, trainer, native, b_e, reading)
    architecture = reading.settle("architecture", architecture)
    layer = trainer.get("layer")
    return Recipe(
        architecture=architecture,
        tensors=native,
        options=options,
        layer=None if layer is None else int(layer),
        site=_site(str(trainer.get("submodule_name") or "")),
        hook=trainer.get("submodule_name"),
        dtype=torch.float32,
        extra={"source": {"format": NAME, "path": str(location), "config": config}},
    )


def _architecture(
    dict_class: str,
    found: dict[str, torch.Tensor],
    trainer: dict[str, Any],
    native: dict[str, torch.Tensor],
    b_e: torch.Tensor | None,
    reading: Reading,
) -> tuple[str, dict[str, Any]]:
    d_sae = native["W_e"].shape[0]
    if dict_class == "GatedAutoEncoder":
        native.update(b_gate=found["gate_bias"], r_mag=found["r_mag"], b_mag=found["mag_bias"])
        return "gated", {}
    native["b_e"] = b_e
    if dict_class in ("AutoEncoder", "AutoEncoderNew"):
        return "relu", {}
    if dict_class == "JumpReluAutoEncoder":
        native["threshold"] = found["threshold"]
        return "jumprelu", {"threshold_inclusive": False}
    stored_k = int(found["k"])
    if trainer.get("k") is not None and int(trainer["k"]) != stored_k:
        raise reading.refuse(
            f"config.json gives k = {trainer['k']} but ae.pt stores k = {stored_k}", "copy the matching pair again"
        )
    if dict_class == "AutoEncoderTopK":
        # TopK of ReLU(pre) equals ReLU(TopK(pre)): the kept values are the same
        return "topk", {"k": reading.settle("k", stored_k), "relu_after_topk": True, "rescale_by_decoder_norm": False}
    reading.settle("k", stored_k)  # BatchTopK's k shaped training only; checked, not used at inference
    # ReLU(pre) * [ReLU(pre) > t] == ReLU(pre) * [pre > t] for every t (t = -1 before any threshold was learnt)
    native["threshold"] = found["threshold"].reshape(1).expand(d_sae).to(native["W_e"].dtype).clone()
    return "jumprelu", {"threshold_inclusive": False}


def _site(submodule_name: str) -> str:
    name = submodule_name.lower()
    for key, site in (("resid_pre", "resid_pre"), ("mlp", "mlp_out"), ("attn", "attn_out")):
        if key in name:
            return site
    return "resid_post"
