"""SAEs from plain state dicts (no ``"cafe_sae"`` config), in the layouts other tools save.

Two layouts are recognised by their tensor names:

``W_e, b_e, b_d, W_d, b_h``
    This plugin's own parameters, e.g. ``torch.save(sae.state_dict(), path)``.
``W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in]``
    The layout of SAELens and saev-style SAEs. Their single ``b_dec`` is added to the reconstruction
    (``b_h``) and, when ``subtract_decoder_bias`` (the default), also subtracted from the input first (``b_d``),
    i.e. ``z = sigma((h - b_dec) W_enc + b_enc)``. Set it to False for SAEs that encode ``h`` directly
    (SAELens ``apply_b_dec_to_input = False``).

Sizes come from the tensor shapes; the architecture (and ``k``) from the caller.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from .base import BaseSAE
from .errors import SAEConfigError, SAEFileError
from .io import CheckpointConfig, check_tensors, sae_from_config

__all__ = ["NATIVE_KEYS", "SAELENS_KEYS", "from_state_dict"]

NATIVE_KEYS = ("W_e", "b_e", "b_d", "W_d", "b_h")
SAELENS_KEYS = ("W_enc", "b_enc", "W_dec", "b_dec")


def from_state_dict(
    tensors: Mapping[str, torch.Tensor],
    *,
    architecture: str,
    source: Path | str,
    k: int | None = None,
    layer: int | None = None,
    site: str | None = None,
    subtract_decoder_bias: bool | None = None,
) -> BaseSAE:
    """Build an SAE from a plain state dict in one of the recognised layouts.

    Parameters
    ----------
    tensors : mapping of str to torch.Tensor
        The state dict.
    architecture : {"relu", "topk"}
        Which SAE it is (a plain state dict does not say).
    source : path or str
        Where the tensors came from, for messages.
    k : int, optional
        Latents kept per row; required for ``"topk"``.
    layer : int, optional
        Block the SAE reads.
    site : {"patch", "cls", "all"}, optional
        Tokens it was trained on; ``"all"`` when not given.
    subtract_decoder_bias : bool, optional
        For the ``W_enc``/``W_dec`` layout: whether ``b_dec`` is subtracted from the input (default True).

    Raises
    ------
    SAEFileError
        If the layout is not recognised, or a tensor is missing, misshapen or not finite.
    SAEConfigError
        If ``k`` is missing for a TopK SAE, or ``subtract_decoder_bias`` is given for the native layout.
    """
    if "W_e" in tensors:
        if subtract_decoder_bias is not None:
            raise SAEConfigError(
                f"subtract_decoder_bias applies only to state dicts with a single b_dec (W_enc/W_dec layout), but "
                f"{source} has separate b_d and b_h; remove subtract_decoder_bias from the SAE params"
            )
        native = dict(tensors)
        layout = "cafe"
    elif "W_enc" in tensors:
        native = _from_saelens(tensors, source, True if subtract_decoder_bias is None else subtract_decoder_bias)
        layout = "W_enc/W_dec"
    else:
        raise SAEFileError(
            f"{source} has neither a 'cafe_sae' config nor the tensors of a known layout (it holds "
            f"{', '.join(map(repr, sorted(tensors)[:10])) or 'no tensors'}); expected {', '.join(NATIVE_KEYS)} or "
            f"{', '.join(SAELENS_KEYS)}: rename the tensors to one of these layouts, or re-save the SAE with "
            "cafe_sae.io.save"
        )
    if architecture == "topk" and k is None:
        raise SAEConfigError(
            f"{source} is a plain state dict and does not record the TopK k; give k in the SAE params"
        )
    w_e = native.get("W_e")
    if w_e is None or w_e.dim() != 2:
        shape = None if w_e is None else list(w_e.shape)
        raise SAEFileError(f"{source}: the encoder must be a matrix, got shape {shape}; the file is damaged")
    d_sae, d_in = w_e.shape
    if architecture == "topk" and k > d_sae:
        raise SAEConfigError(f"k={k} is larger than the {d_sae} latents of {source}; give a k <= {d_sae}")
    config = CheckpointConfig(
        format_version=1,
        architecture=architecture,
        d_in=d_in,
        d_sae=d_sae,
        layer=layer,
        site=site or "all",
        k=k if architecture == "topk" else None,
        extra={"source_layout": layout},
    )
    return sae_from_config(config, native, source, sizes_from="its encoder W_e")


def _from_saelens(tensors: Mapping[str, torch.Tensor], source: Path | str, subtract: bool) -> dict[str, torch.Tensor]:
    w_enc = tensors["W_enc"]
    if w_enc.dim() != 2:
        raise SAEFileError(
            f"tensor 'W_enc' of {source} has shape {list(w_enc.shape)}, not [d_in, d_sae]; the file is damaged"
        )
    d_in, d_sae = w_enc.shape
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    check_tensors(tensors, expected, source, f"its W_enc of shape [d_in={d_in}, d_sae={d_sae}]")
    b_dec = tensors["b_dec"]
    return {
        "W_e": w_enc.t().contiguous(),
        "b_e": tensors["b_enc"],
        "b_d": b_dec.clone() if subtract else torch.zeros_like(b_dec),
        "W_d": tensors["W_dec"].t().contiguous(),
        "b_h": b_dec,
    }
