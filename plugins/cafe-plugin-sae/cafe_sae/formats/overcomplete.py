"""overcomplete SAEs saved as a bare state dict (``torch.save(sae.state_dict(), path)`` or safetensors).

The default ``"linear"`` encoder is ``encoder.final_block.0`` (an ``nn.Linear``: ``weight [nb_concepts, d]``,
``bias``); an untied ``TieableEncoder`` is ``encoder.weight`` (and ``encoder.bias`` if it has one). The
dictionary is ``dictionary._weights [nb_concepts, d]`` and ``dictionary.multiplier``; it decodes with
``z @ (normalize_l2(_weights) * exp(multiplier))`` (the default ``"l2"`` dictionary normalisation) and has no
bias. Nothing is subtracted from the input.

=============  =============================  ===========================================================
class          state dict                     latents (``pre = W h + b``)
=============  =============================  ===========================================================
``SAE``        (no ``thresholds``)            ``ReLU(pre)``: give ``architecture = "relu"``
``TopKSAE``    (no ``thresholds``)            ``TopK_k(ReLU(pre))``: give ``k`` (it is not saved)
``JumpSAE``    ``thresholds`` (their logs)    ``ReLU(pre) * [pre >= exp(thresholds)]``
=============  =============================  ===========================================================

Layer and tokens are not recorded. Encoders with hidden layers or normalisation (``mlp_*``, ``resnet_*``,
``attention_*``) are not linear SAEs and are refused.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from .recipe import Reading, Recipe, matrix

__all__ = ["NAME", "from_tensors", "recognises"]

NAME = "overcomplete"
_LINEAR = "encoder.final_block.0."
_TIEABLE = "encoder."


def recognises(tensors: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict is an overcomplete SAE's."""
    return "dictionary._weights" in tensors


def from_tensors(tensors: dict[str, torch.Tensor], reading: Reading) -> Recipe:
    """The recipe of an overcomplete state dict."""
    prefix = _LINEAR if f"{_LINEAR}weight" in tensors else _TIEABLE
    if f"{prefix}weight" not in tensors:
        raise reading.refuse(
            "it has no linear encoder weight ('encoder.final_block.0.weight' or 'encoder.weight'): its encoder is "
            "tied to the dictionary or is not a single linear layer",
            "cafe reads overcomplete SAEs with the default 'linear' encoder or an untied TieableEncoder",
        )
    d_sae, d_in = matrix(tensors, f"{prefix}weight", reading).shape
    shapes: dict[str, tuple[int, ...]] = {f"{prefix}weight": (d_sae, d_in), "dictionary._weights": (d_sae, d_in)}
    for optional, shape in ((f"{prefix}bias", (d_sae,)), ("dictionary.multiplier", ()), ("thresholds", (d_sae,))):
        if optional in tensors:
            shapes[optional] = shape
    found = reading.take(tensors, shapes, "an overcomplete SAE with a linear encoder")

    w_e = found[f"{prefix}weight"]
    dictionary = found["dictionary._weights"]
    dictionary = dictionary / (torch.norm(dictionary, p=2, dim=1, keepdim=True) + 1e-8)
    if "dictionary.multiplier" in found:
        dictionary = dictionary * torch.exp(found["dictionary.multiplier"])
    zeros = torch.zeros(d_in, dtype=w_e.dtype)
    native = {
        "W_e": w_e,
        "b_e": found.get(f"{prefix}bias", torch.zeros(d_sae, dtype=w_e.dtype)),
        "b_d": zeros,
        "W_d": dictionary.t(),
        "b_h": zeros.clone(),
    }
    options: dict[str, Any] = {}
    if "thresholds" in found:
        architecture = reading.settle("architecture", "jumprelu")
        native["threshold"] = torch.exp(found["thresholds"])
        options["threshold_inclusive"] = True
    else:
        architecture = _plain_architecture(reading)
        if architecture == "topk":
            k = reading.require("k", "overcomplete does not save TopKSAE's top_k")
            options.update(k=k, relu_after_topk=True, rescale_by_decoder_norm=False)
    return Recipe(
        architecture=architecture,
        tensors=native,
        options=options,
        dtype=torch.float32,
        extra={"source": {"format": NAME, "path": str(reading.source), "encoder": prefix.rstrip(".")}},
    )


def _plain_architecture(reading: Reading) -> str:
    architecture = reading.optional("architecture")
    if architecture is None:
        if reading.optional("k") is None:
            raise reading.refuse(
                "an overcomplete SAE and TopKSAE save the same tensors, and neither records which it is",
                'give k = ... for a TopKSAE, or architecture = "relu" for a plain SAE, in the SAE params',
            )
        return "topk"
    if architecture not in ("relu", "topk"):
        raise reading.refuse(
            f"the params give architecture = {architecture!r}, but a state dict without 'thresholds' is an "
            "overcomplete SAE (relu) or TopKSAE (topk)",
            'give architecture = "relu" or "topk"',
        )
    return architecture
