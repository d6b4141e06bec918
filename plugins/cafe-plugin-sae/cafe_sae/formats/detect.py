"""Which format a checkpoint path holds, from file names, a peek at headers and, for bare state dicts, the keys.

:func:`read_recipe` is the entry point: it detects (or takes the named format), picks the reader and returns its
:class:`~cafe_sae.formats.recipe.Recipe`.
"""

from __future__ import annotations

import importlib
import json
import struct
from pathlib import Path

from ..config import CONFIG_KEY
from ..errors import SAEFileError
from . import dictionary_learning, prisma, saelens, saev
from .recipe import Reading, Recipe

__all__ = ["detect", "read_recipe"]

_PLAIN = "plain state dict"
_JSON_LIMIT = 1 << 20


def detect(location: Path) -> tuple[str, Path]:
    """The format of the checkpoint at ``location`` (a file or folder; ``"plain state dict"`` for bare tensors), and
    the path its reader takes (the checkpoint file, where a folder holds a single-file format).

    Raises
    ------
    SAEFileError
        If the folder or file matches no known format, saying what was looked for.
    """
    return _detect_folder(location) if location.is_dir() else (_detect_file(location), location)


def read_recipe(location: Path, format_name: str, reading: Reading) -> Recipe:
    """Read ``location`` in ``format_name`` (``"auto"``: detect it) into a recipe; ``reading.format`` is set."""
    name, location = detect(location) if format_name == "auto" else (format_name, location)
    if name in (_PLAIN, "overcomplete", "state_dict"):
        tensors = _plain_tensors(location, reading)
        if name == _PLAIN:
            name = "overcomplete" if importlib.import_module(f"{__package__}.overcomplete").recognises(tensors) \
                else "state_dict"
        reading.format = name
        return importlib.import_module(f"{__package__}.{name}").from_tensors(tensors, reading)
    reading.format = name
    return importlib.import_module(f"{__package__}.{name}").read(location, reading)


def _detect_folder(folder: Path) -> tuple[str, Path]:
    names = {path.name for path in folder.iterdir()}
    if saelens.CONFIG_NAME in names and saelens.WEIGHTS_NAME in names:
        return saelens.NAME, folder
    if saev.WEIGHTS_NAME in names:
        return saev.NAME, folder / saev.WEIGHTS_NAME
    if "config.json" in names:
        config = _json(folder / "config.json")
        if dictionary_learning.looks_like_config(config) and dictionary_learning.WEIGHTS_NAME in names:
            return dictionary_learning.NAME, folder
        if prisma.looks_like_config(config) and prisma.weights_file(folder) is not None:
            return prisma.NAME, folder
    cafe_files = [path for path in sorted(folder.glob("*.safetensors")) if _has_cafe_config(path)]
    if len(cafe_files) == 1:
        return "cafe", cafe_files[0]
    raise SAEFileError(
        f"{folder} holds no SAE checkpoint cafe recognises (it has {_listing(names)}); expected cfg.json + "
        "sae_weights.safetensors (SAELens), sae.pt (saev), config.json + ae.pt (dictionary_learning), "
        "config.json + one .pt (ViT-Prisma), or one cafe .safetensors: give the checkpoint file itself, or "
        "`format` in the SAE params"
    )


def _detect_file(path: Path) -> str:
    folder = path.parent
    if path.name in (saelens.CONFIG_NAME, saelens.WEIGHTS_NAME) and (folder / saelens.CONFIG_NAME).is_file() \
            and (folder / saelens.WEIGHTS_NAME).is_file():
        return saelens.NAME
    if path.suffix == ".json":
        config = _json(path)
        for module in (dictionary_learning, prisma):
            if module.looks_like_config(config):
                return module.NAME
        raise SAEFileError(
            f"{path} is neither a dictionary_learning nor a ViT-Prisma config; give the weights file or its folder"
        )
    try:
        with path.open("rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        raise SAEFileError(f"cannot read SAE checkpoint {path} ({exc}); check its permissions") from exc
    if head[:1] == b"{" and saev.read_header(path) is not None:
        return saev.NAME
    if _is_safetensors(head):
        return "cafe" if _has_cafe_config(path) else _PLAIN
    sibling = folder / "config.json"
    if sibling.is_file():
        config = _json(sibling)
        if dictionary_learning.looks_like_config(config):
            return dictionary_learning.NAME
        if prisma.looks_like_config(config):
            return prisma.NAME
    return _PLAIN


def _plain_tensors(location: Path, reading: Reading) -> dict:
    from ..io import read_safetensors
    from .torch_files import flat_tensors, is_torch_file, load_weights

    if location.is_dir():
        raise reading.refuse("it is a folder, but this format is a single state dict file", "give the file")
    if is_torch_file(location):
        return flat_tensors(load_weights(location, location), location)
    return read_safetensors(location)[0]


def _is_safetensors(head: bytes) -> bool:
    return len(head) >= 9 and head[8:9] == b"{"


def _has_cafe_config(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return False
            (size,) = struct.unpack("<Q", head)
            if size > 100 * _JSON_LIMIT:
                return False
            header = json.loads(handle.read(size))
    except (OSError, ValueError):
        return False
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(metadata, dict) and CONFIG_KEY in metadata


def _json(path: Path) -> dict:
    try:
        if path.stat().st_size > _JSON_LIMIT:
            return {}
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _listing(names: set[str]) -> str:
    shown = sorted(names)[:8]
    return ", ".join(shown) + (f" and {len(names) - 8} more" if len(names) > 8 else "") if shown else "no files"
