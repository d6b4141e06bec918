"""The factories the plugin registers: find the checkpoint, read it in its format, build the SAE.

They take params validated by :mod:`cafe_sae.params` and return the SAE frozen (``requires_grad`` off on every
parameter): a run differentiates latents with respect to the input, never trains the dictionary, and must leave
no parameter gradients behind.
"""

from __future__ import annotations

from pathlib import Path

from .base import BaseSAE
from .formats.detect import read_recipe
from .formats.recipe import Reading, Request, assemble
from .location import HUB_PREFIX, hub_location

__all__ = ["load_any", "load_file", "load_relu", "load_topk", "make_random"]


def load_file(
    path: str | Path,
    format: str = "auto",
    layer: int | None = None,
    tokens: str | None = None,
    site: str | None = None,
    architecture: str | None = None,
    k: int | None = None,
    subtract_decoder_bias: bool | None = None,
    input_mean: float | Path | None = None,
    input_scalar: float | None = None,
    *,
    component: str | None = None,
) -> BaseSAE:
    """Load an SAE checkpoint of any supported format, frozen (the registered ``"file"`` SAE).

    Parameters
    ----------
    path : str or pathlib.Path
        A validated location (see :class:`cafe_sae.params.SAEFileParams`): a local file or folder, or
        ``hf://owner/repo/path``.
    format : str
        ``"auto"`` to detect it, or the format's name.
    layer, tokens, site, architecture, k, subtract_decoder_bias, input_mean, input_scalar : optional
        As in :class:`cafe_sae.params.SAEFileParams`.
    component : str, optional
        The registered name that fixed ``architecture`` (``"relu"``, ``"topk"``), for messages.

    Raises
    ------
    SAEFileError
        For a checkpoint that cannot be found, read or trusted (corrupt, truncated, unknown tensors, NaN, wrong
        shapes), naming the file and the problem.
    SAEConfigError
        If a param contradicts the checkpoint, a param the checkpoint cannot hold is missing, or a param does not
        apply to it.
    """
    text = str(path)
    local = _fetch(text) if text.startswith(HUB_PREFIX) else Path(path)
    request = Request(layer, tokens, site, architecture, k, subtract_decoder_bias, input_mean, input_scalar)
    reading = Reading(text if text.startswith(HUB_PREFIX) else local, format, request, component)
    recipe = read_recipe(local, format, reading)
    if text.startswith(HUB_PREFIX) and isinstance(recipe.extra.get("source"), dict):
        recipe.extra["source"]["path"] = text
    return assemble(recipe, reading).requires_grad_(False)


def load_any(path: str | Path, **params) -> BaseSAE:
    """Load an SAE checkpoint of any supported format from Python, frozen.

    ``params`` are those of the ``"file"`` SAE (:class:`cafe_sae.params.SAEFileParams`), validated there.

    Examples
    --------
    >>> sae = load_any("checkpoints/layer_9", tokens="patch")          # doctest: +SKIP
    >>> sae = load_any("hf://owner/repo/layer_9")                      # doctest: +SKIP
    """
    from .params import SAEFileParams

    validated = SAEFileParams(path=path, **params)
    return load_file(**{name: getattr(validated, name) for name in SAEFileParams.model_fields})


def load_relu(path: str | Path, **params) -> BaseSAE:
    """The registered ``"relu"`` SAE: :func:`load_file` of a ReLU SAE (checkpoints and plain state dicts)."""
    return load_file(path, architecture="relu", component="relu", **params)


def load_topk(path: str | Path, **params) -> BaseSAE:
    """The registered ``"topk"`` SAE: :func:`load_file` of a TopK SAE (plain state dicts need ``k``)."""
    return load_file(path, architecture="topk", component="topk", **params)


def make_random(
    d_in: int,
    d_sae: int,
    layer: int,
    tokens: str = "patch",
    seed: int = 0,
    architecture: str = "relu",
    k: int | None = None,
) -> BaseSAE:
    """An untrained SAE drawn from ``seed`` (see :meth:`cafe_sae.base.BaseSAE.random_init`), frozen."""
    from .architectures import ARCHITECTURES

    extra = {"k": k} if architecture == "topk" else {}
    sae = ARCHITECTURES[architecture].random_init(d_in, d_sae, seed=seed, layer=layer, tokens=tokens, **extra)
    return sae.requires_grad_(False)


def _fetch(uri: str) -> Path:
    from .hub import fetch

    return fetch(hub_location(uri))
