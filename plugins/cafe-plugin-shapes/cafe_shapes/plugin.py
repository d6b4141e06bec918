"""Registers the shapes dataset and its ground-truth metric (imports nothing heavy)."""

from cafe_core import hookimpl

from .params import ObjectHitParams, ShapesParams


@hookimpl
def cafe_register_datasets(register):
    """Register ``shapes``."""
    register(
        "shapes",
        "cafe_shapes.dataset:ShapesDataset",
        params=ShapesParams,
        description="Generated coloured shapes on textured backgrounds, labelled by a known rule",
    )


@hookimpl
def cafe_register_metrics(register):
    """Register ``object_hit``."""
    register(
        "object_hit",
        "cafe_shapes.ground_truth:ObjectHit",
        params=ObjectHitParams,
        description="Share of the top patches on the objects that decided the label (shapes ground truth)",
    )
