"""A directory of the user's own images."""

from __future__ import annotations

import pathlib
from typing import Iterator, Sequence

from cafe_core.errors import CafeError
from cafe_core.protocols import ImageItem

from .decode import decode
from .params import DEFAULT_EXTENSIONS

__all__ = ["ImageFolder", "ImageTooLargeError", "UnreadableImageError"]


class UnreadableImageError(CafeError):
    """An image file could not be decoded."""


class ImageTooLargeError(UnreadableImageError):
    """An image file declares more pixels than Pillow's decompression-bomb limit."""


class ImageFolder:
    """Every image file under ``path``, in sorted order of relative path.

    Parameters
    ----------
    path : path
        The directory (:class:`cafe_datasets.params.FolderParams` checks that it exists).
    recursive : bool
        Include subdirectories.
    extensions : sequence of str
        File suffixes to include, lower case with the dot (as :class:`~cafe_datasets.params.FolderParams`
        writes them); files match whatever the case of their suffix.

    Notes
    -----
    Items hold 8-bit PIL images in their original size and (mostly) mode, decoded by
    :func:`cafe_datasets.decode.decode` (EXIF orientation applied, 16-bit samples scaled, the first frame of
    an animation); the backbone's preprocessing converts them to RGB and resizes them.
    The ``image_id`` of an item is its POSIX path relative to ``path``.
    """

    def __init__(
        self, path: str | pathlib.Path, recursive: bool = True, extensions: Sequence[str] = DEFAULT_EXTENSIONS
    ) -> None:
        self.root = pathlib.Path(path)
        suffixes = set(extensions)
        candidates = self.root.rglob("*") if recursive else self.root.iterdir()
        self.files = sorted(
            (p for p in candidates if p.is_file() and p.suffix.lower() in suffixes),
            key=lambda p: p.relative_to(self.root).as_posix(),
        )
        if not self.files:
            raise CafeError(
                f"no images with suffixes {sorted(suffixes)} in {str(self.root)!r}"
                + ("" if recursive else " (subdirectories excluded: set recursive = true to include them)")
            )

    def __len__(self) -> int:
        return len(self.files)

    def image_file(self, index: int) -> tuple[str, pathlib.Path]:
        """The ``image_id`` and file of item ``index``, without reading the file (a run fingerprints it)."""
        path = self.files[index]
        return path.relative_to(self.root).as_posix(), path

    def __getitem__(self, index: int) -> ImageItem:
        from PIL import Image, UnidentifiedImageError

        path = self.files[index]
        try:
            with Image.open(path) as image:
                loaded = decode(image)
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(
                f"image {str(path)!r} is too large to decode safely ({exc}); downscale the file or remove it "
                "from the folder"
            ) from None
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise UnreadableImageError(
                f"cannot read image {str(path)!r} ({exc}); fix or remove the file, or narrow `extensions`"
            ) from None
        return ImageItem(image_id=path.relative_to(self.root).as_posix(), image=loaded, info={"path": str(path)})

    def __iter__(self) -> Iterator[ImageItem]:
        for index in range(len(self)):
            yield self[index]
