"""Registers the dataset components (imports nothing heavy)."""

from cafe_core import hookimpl

from .params import FolderParams


@hookimpl
def cafe_register_datasets(register):
    """Register ``folder``."""
    register(
        "folder",
        "cafe_datasets.folder:ImageFolder",
        params=FolderParams,
        aliases=("image_folder",),
        description="Every image file under a directory, keyed by relative path",
    )
