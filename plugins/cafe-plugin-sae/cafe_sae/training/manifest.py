"""The manifest of a folder of activations: what was collected, from what, and how far collection got."""

from __future__ import annotations

import json
import pathlib
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ActivationStoreError
from .files import read_json, write_json

__all__ = ["MANIFEST_NAME", "ActivationManifest", "ShardInfo"]

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 2


@dataclass
class ShardInfo:
    """One shard file: ``tokens`` rows of ``d_in`` float32 values (a ``.npy`` array ``[tokens, d_in]``)."""

    file: str
    tokens: int


@dataclass
class ActivationManifest:
    """Everything known about a folder of activation shards.

    Tokens are stored image after image, each image's tokens in sequence order, so token ``t`` of the
    folder is token ``t % tokens_per_image`` (of the token set) of image ``t // tokens_per_image``.

    Attributes
    ----------
    d_in : int
        Width of each token.
    layer : int
        Block whose output was read.
    token_set : {"patch", "cls", "all"}
        Which tokens of each image were kept (``"site"`` in version-1 manifests).
    tokens_per_image : int
        Tokens kept per image.
    num_images : int
        Images to collect (the dataset's length, or the limit).
    shard_tokens : int
        Largest number of tokens in one shard.
    source : dict
        Description of the backbone and the data (compared when collection resumes).
    shards : list of ShardInfo
        The complete shards, in order.
    complete : bool
        Whether every image has been collected.
    """

    d_in: int
    layer: int
    token_set: str
    tokens_per_image: int
    num_images: int
    shard_tokens: int
    source: dict[str, Any]
    shards: list[ShardInfo] = field(default_factory=list)
    complete: bool = False
    dtype: str = "float32"
    format_version: int = FORMAT_VERSION

    @property
    def num_tokens(self) -> int:
        """Tokens in the complete shards."""
        return sum(shard.tokens for shard in self.shards)

    @property
    def images_done(self) -> int:
        """Images whose tokens all lie in complete shards."""
        return self.num_tokens // self.tokens_per_image

    @property
    def total_tokens(self) -> int:
        """Tokens once every image is collected."""
        return self.num_images * self.tokens_per_image

    def identity(self) -> dict[str, Any]:
        """What must match for a collection to resume in this folder."""
        keys = ("d_in", "layer", "token_set", "tokens_per_image", "num_images", "shard_tokens", "dtype")
        return {**{key: getattr(self, key) for key in keys}, "source": _plain(self.source)}

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as written to ``manifest.json``."""
        return {**asdict(self), "tokens": self.num_tokens, "images_done": self.images_done}

    def write(self, directory: pathlib.Path) -> pathlib.Path:
        """Write ``manifest.json`` into ``directory``, atomically."""
        return write_json(pathlib.Path(directory) / MANIFEST_NAME, self.to_dict())

    @classmethod
    def read(cls, directory: pathlib.Path) -> "ActivationManifest":
        """Read the manifest of ``directory``.

        Raises
        ------
        ActivationStoreError
            If it is missing or unreadable.
        """
        path = pathlib.Path(directory) / MANIFEST_NAME
        if not path.is_file():
            raise ActivationStoreError(
                f"{path} does not exist, so {directory} is not a folder of collected activations; collect them "
                "first (collect_activations, or `cafe train-sae`)"
            )
        try:
            raw = read_json(path)
            if raw.get("format_version") not in (1, FORMAT_VERSION):
                raise ValueError(f"format_version {raw.get('format_version')!r} is not 1 or {FORMAT_VERSION}")
            raw = {key: value for key, value in raw.items() if key not in ("tokens", "images_done")}
            if raw["format_version"] == 1:  # version 1 named the token set "site" and the dataset "data"
                raw["token_set"], raw["format_version"] = raw.pop("site"), FORMAT_VERSION
                source = raw.get("source", {})
                if "data" in source:
                    raw["source"] = {("dataset" if key == "data" else key): value for key, value in source.items()}
            raw["shards"] = [ShardInfo(**shard) for shard in raw["shards"]]
            return cls(**raw)
        except (ValueError, TypeError, KeyError) as exc:
            raise ActivationStoreError(
                f"cannot read {path} ({type(exc).__name__}: {exc}); delete the folder and collect again"
            ) from None


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so that comparisons are fair."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))
