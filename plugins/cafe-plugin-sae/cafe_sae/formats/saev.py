"""saev checkpoints: ``sae.pt``, one JSON header line followed by ``torch.save`` of the state dict.

Tensors: ``W_enc [d_model, d_sae]``, ``b_enc``, ``W_dec [d_sae, d_model]``, ``b_dec`` and, for BatchTopK since
schema 4, the buffer ``activation.threshold``. Headers:

* saev 0.1 (no ``schema``): the raw config (``d_vit``, ``exp_factor``, ...); a ReLU SAE.
* ``{"schema": 1, "cls": "Relu" | "TopK" | "BatchTopK", "cfg": {...}}``, or ``"cls": "SparseAutoencoderConfig"``
  with the activation as ``{"cls": ..., "params": ...}`` inside ``cfg``.
* ``{"schema": 2..5, "cfg": {..., "activation": {"cls": ..., "params": {...}}}}``.

Latents, with ``pre = (x - b_dec?) W_enc + b_enc``: ``Relu`` ``ReLU(pre)``; ``TopK`` ``TopK_k(pre)`` *without* a
ReLU (negative values among the top ``k`` are kept); ``BatchTopK`` in eval mode ``pre * [pre > max(threshold, 0)]``
(a JumpReLU with one shared threshold; without a stored threshold it depends on the whole batch, which cafe
refuses).

``b_dec`` is subtracted before encoding by the code that wrote saev 0.1 and schema-1 files, and not by later
releases; this follows the header unless ``subtract_decoder_bias`` is given. saev trains on activations
transformed as ``(h - mean) / scalar`` whose constants are not in the file: ``input_mean`` and ``input_scalar``
are required (``0`` and ``1`` for raw activations, what saev's current data loader provides). Layer and tokens
are not recorded either. The state dict is loaded as float32, like saev's own parameters.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .recipe import Reading, Recipe
from .torch_files import flat_tensors, load_weights

__all__ = ["NAME", "WEIGHTS_NAME", "read", "read_header"]

NAME = "saev"
WEIGHTS_NAME = "sae.pt"
_ACTIVATIONS = {"Relu": "relu", "TopK": "topk", "BatchTopK": "jumprelu"}


def read_header(path: Path) -> tuple[dict[str, Any], bytes] | None:
    """The JSON header and the ``torch.save`` bytes after it, or None if ``path`` does not start with a header."""
    with path.open("rb") as handle:
        if handle.read(1) != b"{":
            return None
        handle.seek(0)
        line = handle.readline()
        try:
            header = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        return (header, handle.read()) if isinstance(header, dict) else None


def read(location: Path, reading: Reading) -> Recipe:
    """Read the saev checkpoint ``location`` (``sae.pt``, or a folder holding it)."""
    path = location / WEIGHTS_NAME if location.is_dir() else location
    found = read_header(path)
    if found is None:
        raise reading.refuse(f"{path} does not start with saev's JSON header line", "copy the file again")
    header, payload = found
    schema = header.get("schema")
    cfg, activation, params = _config(header, reading)
    d_model = int(reading.need(cfg, "d_model" if "d_model" in cfg else "d_vit", "the header"))
    d_sae = cfg.get("d_sae")
    d_sae = int(d_sae) if d_sae is not None else d_model * int(reading.need(cfg, "exp_factor", "the header"))

    tensors = flat_tensors(load_weights(io.BytesIO(payload), path), path, "the state dict of")
    architecture = reading.settle("architecture", _ACTIVATIONS[activation])
    shapes = {"W_enc": (d_model, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_model), "b_dec": (d_model,)}
    if activation == "BatchTopK":
        if "activation.threshold" not in tensors:
            raise reading.refuse(
                "it is a BatchTopK SAE without the inference threshold saev stores since schema 4, so each token's "
                "latents would depend on the rest of its batch",
                "train it with a saev release that stores activation.threshold, or load another SAE",
            )
        shapes["activation.threshold"] = ()
    found_tensors = reading.take(tensors, shapes, f"a saev {activation} SAE")

    default_subtract = schema is None or schema == 1
    subtract = reading.optional("subtract_decoder_bias")
    subtract = default_subtract if subtract is None else subtract
    b_dec = found_tensors["b_dec"]
    native = {
        "W_e": found_tensors["W_enc"].t(),
        "b_e": found_tensors["b_enc"],
        "b_d": b_dec if subtract else torch.zeros_like(b_dec),
        "W_d": found_tensors["W_dec"].t(),
        "b_h": b_dec,
    }
    options: dict[str, Any] = {}
    if activation == "BatchTopK":
        native["threshold"] = found_tensors["activation.threshold"].reshape(1).expand(d_sae).clone()
        options["threshold_inclusive"] = False
    if activation == "TopK":
        options.update(k=reading.settle("k", int(params.get("top_k", 32))), relu_after_topk=False,
                       rescale_by_decoder_norm=False)
    options.update(_normalization(d_model, native, reading))
    return Recipe(
        architecture=architecture,
        tensors=native,
        options=options,
        dtype=torch.float32,
        extra={"source": {"format": NAME, "path": str(location), "header": header, "subtract_decoder_bias": subtract}},
    )


def _config(header: dict[str, Any], reading: Reading) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """``(cfg, activation class name, activation params)`` of any header version."""
    schema = header.get("schema")
    if schema is None:
        return header, "Relu", {}
    if schema not in (1, 2, 3, 4, 5):
        raise reading.refuse(f"its header has schema {schema!r}", "cafe reads saev schemas 1 to 5")
    cfg = header.get("cfg")
    if not isinstance(cfg, dict):
        raise reading.refuse("its header has no 'cfg' object", "copy the file again")
    if schema == 1 and header.get("cls") in _ACTIVATIONS:
        # schema 1 as first written: the class of the config names the activation, top_k sits in cfg
        return cfg, header["cls"], {"top_k": cfg.get("top_k", 32)}
    payload = cfg.get("activation", {"cls": "Relu", "params": {}})
    name = payload.get("cls") if isinstance(payload, dict) else None
    if name not in _ACTIVATIONS:
        raise reading.refuse(
            f"its header names activation {name!r}", f"cafe reads saev activations {', '.join(_ACTIVATIONS)}"
        )
    return cfg, name, dict(payload.get("params") or {})


def _normalization(d_model: int, native: dict[str, torch.Tensor], reading: Reading) -> dict[str, Any]:
    why = "saev scales activations to (h - mean) / scalar before training and keeps neither in the checkpoint; {}"
    mean = reading.require("input_mean", why.format("give the mean vector's file, or 0 for raw activations"))
    scalar = float(reading.require("input_scalar", why.format("give the scalar, or 1 for raw activations")))
    mean_vector = _mean_vector(mean, d_model, reading)
    if scalar == 1.0 and not mean_vector.any():
        return {"normalization": "none"}
    native["input_mean"] = mean_vector
    return {"normalization": "shift_scale", "input_scalar": scalar}


def _mean_vector(mean: float | Path, d_model: int, reading: Reading) -> torch.Tensor:
    if not isinstance(mean, Path):
        return torch.full((d_model,), float(mean), dtype=torch.float32)
    try:
        if mean.suffix == ".npy":
            value = torch.from_numpy(np.load(mean, allow_pickle=False))
        elif mean.suffix == ".safetensors":
            from ..io import read_safetensors

            stored, _ = read_safetensors(mean)
            value = next(iter(stored.values())) if len(stored) == 1 else None
        else:
            value = load_weights(mean, mean)
    except (OSError, ValueError) as exc:
        raise reading.refuse(f"cannot read input_mean {mean} ({exc})", "give a .npy, .pt or .safetensors file") \
            from None
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != (d_model,):
        shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise reading.refuse(
            f"input_mean {mean} holds {shape}, not one vector of the SAE's width {d_model}",
            "give a file holding exactly that vector (the mean activation saev subtracted)",
        )
    return value.to(torch.float32)
