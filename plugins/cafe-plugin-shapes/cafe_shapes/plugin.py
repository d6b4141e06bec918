"""Registers the shapes dataset (imports nothing heavy)."""

from cafe_core import hookimpl

from .params import ShapesParams


@hookimpl
def cafe_register_datasets(register):
    """Register ``shapes``."""
    register(
        "shapes",
        "cafe_shapes.dataset:ShapesDataset",
        params=ShapesParams,
        description="Generated coloured shapes on textured backgrounds, labelled by a known rule",
    )
