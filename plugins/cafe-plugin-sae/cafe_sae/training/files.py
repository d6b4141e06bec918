"""Atomic file writes: a file is either absent, or complete (a crash never leaves half of one)."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable

__all__ = ["atomic_write", "read_json", "write_json"]


def atomic_write(path: pathlib.Path, write: Callable[[pathlib.Path], None]) -> pathlib.Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then rename it to ``path``.

    The rename is atomic on POSIX and Windows, so readers see the old file or the new one, never a partial
    one. The temporary file is removed if ``write`` fails.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: pathlib.Path, value: Any) -> pathlib.Path:
    """Write ``value`` as indented JSON, atomically."""
    text = json.dumps(value, indent=2, sort_keys=True) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_json(path: pathlib.Path) -> Any:
    """Parse a JSON file."""
    return json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
