"""cafe's own checkpoints (see :mod:`cafe_sae.io` and :mod:`cafe_sae.config`) as a recipe: everything is recorded."""

from __future__ import annotations

from pathlib import Path

from ..config import CheckpointConfig
from .recipe import Reading, Recipe

__all__ = ["NAME", "read", "recipe_of"]

NAME = "cafe"


def read(location: Path, reading: Reading) -> Recipe:
    """Read the cafe checkpoint file ``location``."""
    from ..io import read_checkpoint

    if location.is_dir():
        raise reading.refuse("it is a folder", "give the path of the .safetensors checkpoint in it")
    checkpoint = read_checkpoint(location)
    if checkpoint.config is None:
        raise reading.refuse(
            "it has no 'cafe_sae' config in its header",
            "load it as SAE 'relu' or 'topk' (plain state dicts are read there), or re-save it with cafe_sae.io.save",
        )
    return recipe_of(checkpoint.config, checkpoint.tensors, reading)


def recipe_of(config: CheckpointConfig, tensors: dict, reading: Reading) -> Recipe:
    """The recipe of a validated config and its tensors, checked against each other."""
    from ..architectures import ARCHITECTURES
    from ..io import check_tensors

    kwargs = config.constructor_kwargs()
    expected = ARCHITECTURES[config.architecture](config.d_in, config.d_sae, device="meta", **kwargs).expected_shapes()
    check_tensors(tensors, expected, reading.source, f"its config (d_in={config.d_in}, d_sae={config.d_sae})")
    architecture = reading.settle("architecture", config.architecture)
    options = {name: kwargs[name] for name in ("normalization", "input_scalar") if kwargs[name] is not None}
    if architecture == "topk":
        options.update(k=reading.settle("k", config.k), relu_after_topk=config.relu_after_topk,
                       rescale_by_decoder_norm=config.rescale_by_decoder_norm)
    if architecture == "jumprelu":
        options["threshold_inclusive"] = config.threshold_inclusive
    return Recipe(
        architecture=architecture,
        tensors=dict(tensors),
        options=options,
        layer=config.layer,
        site=config.site,
        tokens=config.tokens,
        extra=dict(config.extra),
    )
