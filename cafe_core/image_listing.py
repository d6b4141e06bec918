"""The images of a run, each with a content fingerprint, so that a resumed run notices changed data.

A dataset whose items are files says so with the optional method ``image_file(index) -> (image_id, path)``;
a file's fingerprint is its size and modification time, and the SHA-256 of its bytes. On resume, a file
whose size and time are unchanged is taken as unchanged without reading it; otherwise its hash decides. An
item that is not a file is fingerprinted by the hash of its decoded pixels (which reads every item once).
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

__all__ = ["ImageEntry", "current_listing", "file_hash", "reconcile"]


@dataclass(frozen=True)
class ImageEntry:
    """One image of a run's listing: its id, place in the dataset, and fingerprint.

    ``size`` and ``mtime_ns`` are ``None`` for an item that is not a file.
    """

    image_id: str
    index: int
    size: int | None
    mtime_ns: int | None
    sha256: str | None

    def same_stat(self, other: "ImageEntry") -> bool:
        """Whether size and modification time match (both known)."""
        return self.size is not None and (self.size, self.mtime_ns) == (other.size, other.mtime_ns)


def file_hash(path: str | pathlib.Path) -> str:
    """SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def current_listing(dataset: Any, indices: Iterable[int]) -> list[ImageEntry]:
    """The images of ``dataset`` at ``indices``; files with size and time only (``sha256`` left ``None``)."""
    image_file = getattr(dataset, "image_file", None)
    entries = []
    for index in indices:
        if callable(image_file):
            image_id, path = image_file(index)
            stat = pathlib.Path(path).stat()
            entries.append(ImageEntry(image_id, index, stat.st_size, stat.st_mtime_ns, None))
        else:
            item = dataset[index]
            pixels = np.asarray(item.image)
            digest = hashlib.sha256(f"{item.image.mode}{pixels.shape}".encode() + pixels.tobytes()).hexdigest()
            entries.append(ImageEntry(item.image_id, index, None, None, digest))
    return entries


def reconcile(
    current: list[ImageEntry], stored: dict[str, ImageEntry], hash_of: Any
) -> tuple[list[ImageEntry], list[str]]:
    """The current listing with every fingerprint complete, and the ids of images whose content changed.

    Parameters
    ----------
    current : list of ImageEntry
        From :func:`current_listing`.
    stored : dict
        The entries the run store holds, by image id.
    hash_of : callable
        ``hash_of(index) -> str``: the SHA-256 of the file of dataset item ``index``.
    """
    complete, changed = [], []
    for entry in current:
        before = stored.get(entry.image_id)
        if entry.sha256 is None:
            same = before is not None and entry.same_stat(before)
            entry = dataclasses.replace(entry, sha256=before.sha256 if same else hash_of(entry.index))
        if before is not None and before.sha256 != entry.sha256:
            changed.append(entry.image_id)
        complete.append(entry)
    return complete, changed
