"""Plain state dicts without any config (safetensors or ``torch.save`` files), in two layouts.

``W_e, b_e, b_d, W_d, b_h``
    This plugin's own parameters, e.g. ``torch.save(sae.state_dict(), path)``.
``W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in]``
    SAELens-style weights without their ``cfg.json``. The single ``b_dec`` is added to the reconstruction
    (``b_h``) and, when ``subtract_decoder_bias`` (the default), also subtracted from the input first (``b_d``),
    i.e. ``z = sigma((h - b_dec) W_enc + b_enc)``. Set it to False for SAEs that encode ``h`` directly.

Nothing but the sizes is recorded: the architecture (``relu`` or ``topk``, with ``k``) and the tokens come from
the params.
"""

from __future__ import annotations

from typing import Any

import torch

from .recipe import Reading, Recipe, matrix

__all__ = ["NAME", "NATIVE_KEYS", "SAELENS_KEYS", "from_tensors"]

NAME = "state_dict"
NATIVE_KEYS = ("W_e", "b_e", "b_d", "W_d", "b_h")
SAELENS_KEYS = ("W_enc", "b_enc", "W_dec", "b_dec")


def from_tensors(tensors: dict[str, torch.Tensor], reading: Reading) -> Recipe:
    """The recipe of a plain state dict in one of the two layouts."""
    if "W_e" in tensors:
        native, layout = dict(tensors), "cafe"
    elif "W_enc" in tensors:
        native, layout = _from_saelens_layout(tensors, reading), "W_enc/W_dec"
    else:
        raise reading.refuse(
            f"it has neither a 'cafe_sae' config nor the tensors of a known layout (it holds "
            f"{', '.join(map(repr, sorted(tensors)[:10])) or 'no tensors'}); expected {', '.join(NATIVE_KEYS)} or "
            f"{', '.join(SAELENS_KEYS)}",
            "rename the tensors to one of these layouts, give `format` if it is another library's checkpoint, "
            "or re-save the SAE with cafe_sae.io.save",
        )
    architecture = reading.require("architecture", "a plain state dict does not say; use SAE 'relu' or 'topk'")
    if architecture not in ("relu", "topk"):
        raise reading.refuse(
            f"the params give architecture = {architecture!r}, but plain state dicts are read as relu or topk SAEs",
            "save the SAE with cafe_sae.io.save to keep other architectures",
        )
    d_sae = matrix(native, "W_e", reading).shape[0]
    options: dict[str, Any] = {}
    if architecture == "topk":
        k = reading.require("k", "the number of latents the TopK SAE keeps per token")
        if k > d_sae:
            raise reading.refuse(f"k={k} is larger than its {d_sae} latents", f"give a k <= {d_sae}")
        options.update(k=k, relu_after_topk=True, rescale_by_decoder_norm=False)
    return Recipe(architecture=architecture, tensors=native, options=options, extra={"source_layout": layout})


def _from_saelens_layout(tensors: dict[str, torch.Tensor], reading: Reading) -> dict[str, torch.Tensor]:
    d_in, d_sae = matrix(tensors, "W_enc", reading).shape
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    found = reading.take(tensors, shapes, "a W_enc/W_dec state dict")
    subtract = reading.optional("subtract_decoder_bias")
    b_dec = found["b_dec"]
    return {
        "W_e": found["W_enc"].t().contiguous(),
        "b_e": found["b_enc"],
        "b_d": b_dec.clone() if subtract in (None, True) else torch.zeros_like(b_dec),
        "W_d": found["W_dec"].t().contiguous(),
        "b_h": b_dec,
    }
