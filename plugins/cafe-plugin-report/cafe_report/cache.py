"""Figures named by a digest of what they show, so re-writing a report redraws only what changed."""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any, Callable

import numpy as np

__all__ = ["FIGURE_VERSION", "FigureCache", "code_version", "digest"]

def code_version(*modules: str) -> bytes:
    """A digest of the source of some modules of this package: cached results made by other code are not reused."""
    h = hashlib.blake2b(digest_size=8)
    folder = pathlib.Path(__file__).resolve().parent
    for name in modules:
        h.update((folder / name).read_bytes())
    return h.digest()


FIGURE_VERSION = code_version("colours.py", "drawing.py", "figures.py", "gallery.py", "nonlocal_figure.py")
"""The version of the drawing code: a change to how figures look redraws the old files."""


def digest(*parts: Any) -> str:
    """A short hex digest of arrays, numbers, strings and nested lists/dicts of them."""
    h = hashlib.blake2b(digest_size=10)
    for part in parts:
        _feed(h, part)
    return h.hexdigest()


def _feed(h: Any, part: Any) -> None:
    if isinstance(part, np.ndarray):
        h.update(str((part.dtype, part.shape)).encode())
        h.update(np.ascontiguousarray(part).tobytes())
    elif isinstance(part, (list, tuple)):
        h.update(b"[")
        for item in part:
            _feed(h, item)
        h.update(b"]")
    elif isinstance(part, dict):
        for key in sorted(part, key=str):
            _feed(h, str(key))
            _feed(h, part[key])
    else:
        h.update(json.dumps(part, default=str).encode())
    h.update(b"|")


class FigureCache:
    """The figures of one report folder: drawn when missing, kept when their content is unchanged.

    Parameters
    ----------
    folder : pathlib.Path
        Where the PNG files live.
    """

    def __init__(self, folder: pathlib.Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.used: set[str] = set()
        self.drawn = 0

    def get(self, stem: str, key: str, draw: Callable[[pathlib.Path], Any]) -> pathlib.Path:
        """The figure ``<stem>-<digest>.png`` of content ``key`` and of this version of the drawing code, calling
        ``draw(path)`` only if it does not exist yet."""
        path = self.folder / f"{stem}-{digest(key, FIGURE_VERSION.hex())}.png"
        if not path.is_file():
            draw(path)
            self.drawn += 1
        self.used.add(path.name)
        return path

    def remove_unused(self) -> int:
        """Delete the PNG files of earlier reports that this one did not use; returns how many."""
        stale = [p for p in self.folder.glob("*.png") if p.name not in self.used]
        for path in stale:
            path.unlink()
        return len(stale)
