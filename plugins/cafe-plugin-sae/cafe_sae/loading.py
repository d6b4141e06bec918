"""The factories the plugin registers: read a checkpoint, check it against the params, build the SAE.

They return the SAE frozen (``requires_grad`` off on every parameter): a run differentiates latents with
respect to the input, never trains the dictionary, and must leave no parameter gradients behind.
"""

from __future__ import annotations

from pathlib import Path

from .base import BaseSAE
from .errors import SAEConfigError, SAEFileError
from .io import CONFIG_KEY, read_checkpoint, sae_from_config
from .layouts import from_state_dict

__all__ = ["load_file", "load_relu", "load_topk", "make_random"]


def load_file(path: str | Path, layer: int | None = None, site: str | None = None) -> BaseSAE:
    """Load a checkpoint written by :func:`cafe_sae.io.save`, whatever its architecture.

    Parameters
    ----------
    path : str or pathlib.Path
        The checkpoint.
    layer, site : optional
        Checked against the config (a different value is an error) or filled in where it has none.

    Raises
    ------
    SAEFileError
        For an unreadable or inconsistent file, or a plain state dict (its architecture is unknown).
    SAEConfigError
        If ``layer`` or ``site`` contradicts the checkpoint.
    """
    checkpoint = read_checkpoint(path)
    if checkpoint.config is None:
        raise SAEFileError(
            f"{checkpoint.path} has no {CONFIG_KEY!r} config, so SAE 'file' cannot tell its architecture; use SAE "
            "'relu' or 'topk' instead (they read plain state dicts), or re-save it with cafe_sae.io.save"
        )
    sae = sae_from_config(checkpoint.config, checkpoint.tensors, checkpoint.path)
    return _apply(sae, checkpoint.path, layer, site)


def load_relu(
    path: str | Path,
    layer: int | None = None,
    site: str | None = None,
    subtract_decoder_bias: bool | None = None,
) -> BaseSAE:
    """Load a ReLU SAE from a checkpoint or a plain state dict (see :mod:`cafe_sae.layouts`).

    Raises
    ------
    SAEFileError, SAEConfigError
        As :func:`load_file`; also if the checkpoint holds another architecture.
    """
    return _load_as("relu", path, layer, site, None, subtract_decoder_bias)


def load_topk(
    path: str | Path,
    layer: int | None = None,
    site: str | None = None,
    k: int | None = None,
    subtract_decoder_bias: bool | None = None,
) -> BaseSAE:
    """Load a TopK SAE from a checkpoint or a plain state dict (which needs ``k``).

    Raises
    ------
    SAEFileError, SAEConfigError
        As :func:`load_file`; also if the checkpoint holds another architecture or another ``k``.
    """
    return _load_as("topk", path, layer, site, k, subtract_decoder_bias)


def _load_as(
    architecture: str,
    path: str | Path,
    layer: int | None,
    site: str | None,
    k: int | None,
    subtract_decoder_bias: bool | None,
) -> BaseSAE:
    checkpoint = read_checkpoint(path)
    config = checkpoint.config
    if config is None:
        sae = from_state_dict(
            checkpoint.tensors,
            architecture=architecture,
            source=checkpoint.path,
            k=k,
            layer=layer,
            site=site,
            subtract_decoder_bias=subtract_decoder_bias,
        )
        return sae.requires_grad_(False)
    if config.architecture != architecture:
        raise SAEConfigError(
            f"{checkpoint.path} holds a {config.architecture} SAE, not a {architecture} one; use SAE "
            f"'{config.architecture}' (or 'file', which reads the architecture from the checkpoint)"
        )
    if subtract_decoder_bias is not None:
        raise SAEConfigError(
            f"subtract_decoder_bias applies only to plain state dicts, but {checkpoint.path} is a cafe checkpoint "
            "with separate b_d and b_h; remove subtract_decoder_bias from the SAE params"
        )
    if k is not None and config.k != k:
        raise SAEConfigError(
            f"the params ask for k={k} but {checkpoint.path} was trained with k={config.k}; remove k from the "
            f"params or set it to {config.k}"
        )
    sae = sae_from_config(config, checkpoint.tensors, checkpoint.path)
    return _apply(sae, checkpoint.path, layer, site)


def _apply(sae: BaseSAE, path: Path | str, layer: int | None, site: str | None) -> BaseSAE:
    if layer is not None:
        if sae.layer is not None and sae.layer != layer:
            raise SAEConfigError(
                f"the params give layer {layer} but {path} was trained on layer {sae.layer}; set the SAE's layer "
                f"to {sae.layer} (and read that block), or use an SAE trained on layer {layer}"
            )
        sae.layer = layer
    if site is not None:
        if sae.site != site:
            raise SAEConfigError(
                f"the params give site {site!r} but {path} was trained on site {sae.site!r}; set site to "
                f"{sae.site!r}, or remove it from the params"
            )
    return sae.requires_grad_(False)


def make_random(
    d_in: int, d_sae: int, layer: int, seed: int = 0, architecture: str = "relu", k: int | None = None
) -> BaseSAE:
    """An untrained SAE drawn from ``seed`` (see :meth:`cafe_sae.base.BaseSAE.random_init`), frozen."""
    if architecture == "topk":
        from .topk import TopKSAE

        sae = TopKSAE.random_init(d_in, d_sae, seed=seed, layer=layer, k=k)
    else:
        from .relu import ReluSAE

        sae = ReluSAE.random_init(d_in, d_sae, seed=seed, layer=layer)
    return sae.requires_grad_(False)
