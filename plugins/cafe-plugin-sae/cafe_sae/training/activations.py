"""Collect a backbone's token activations at one layer, for one token set, streamed to disk in shards.

Collection is resumable: shards are written whole (atomically) and recorded in the manifest only once
written, so an interrupted collection continues after its last complete shard and rewrites the partial one.
"""

from __future__ import annotations

import pathlib
from typing import Any, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from ..base import TOKEN_SETS
from .errors import ActivationStoreError
from .files import atomic_write
from .manifest import ActivationManifest, ShardInfo

__all__ = ["collect_activations", "describe_backbone", "token_slice", "write_activations"]


def token_slice(backbone: Any, tokens: str) -> slice:
    """Positions of the token set ``tokens`` in the backbone's token sequence.

    Parameters
    ----------
    backbone : Backbone
        Its ``prefix_tokens`` name the positions before the patch tokens.
    tokens : {"patch", "cls", "all"}
        ``"patch"``: the patch tokens; ``"cls"``: the class token; ``"all"``: every token.

    Raises
    ------
    ActivationStoreError
        For an unknown token set, or ``"cls"`` on a backbone without a class token.
    """
    prefix = tuple(backbone.prefix_tokens)
    if tokens == "patch":
        return slice(len(prefix), None)
    if tokens == "all":
        return slice(None)
    if tokens == "cls":
        if "cls" not in prefix:
            raise ActivationStoreError(
                f"tokens 'cls' needs a class token, but the backbone's prefix tokens are {list(prefix)}; use tokens "
                "'patch' or 'all'"
            )
        index = prefix.index("cls")
        return slice(index, index + 1)
    raise ActivationStoreError(f"tokens must be one of {TOKEN_SETS}, got {tokens!r}")


def tokens_per_image(backbone: Any, tokens: str) -> int:
    """Number of tokens of the token set ``tokens`` in one image."""
    grid = backbone.grid_size
    total = len(backbone.prefix_tokens) + int(grid[0]) * int(grid[1])
    return len(range(total)[token_slice(backbone, tokens)])


def describe_backbone(backbone: Any) -> dict[str, Any]:
    """Class and token geometry of a backbone (plus its repr when the class defines one)."""
    cls = type(backbone)
    description: dict[str, Any] = {"class": f"{cls.__module__}.{cls.__qualname__}"}
    for name in ("depth", "width", "image_size", "patch_size", "grid_size", "prefix_tokens"):
        value = getattr(backbone, name, None)
        description[name] = list(value) if isinstance(value, tuple) else value
    if cls.__repr__ is not object.__repr__:  # the default repr holds a memory address, never equal twice
        description["repr"] = repr(backbone)
    return description


def collect_activations(
    backbone: Any,
    dataset: Any,
    layer: int,
    tokens: str,
    out_dir: str | pathlib.Path,
    *,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    shard_tokens: int = 65536,
    limit: int | None = None,
    progress: bool = False,
    source: Mapping[str, Any] | None = None,
) -> ActivationManifest:
    """Run the backbone over a dataset and write one token set of one layer to shards.

    Tokens are written image after image (each image's tokens in sequence order) to ``.npy`` float32 files
    of at most ``shard_tokens`` rows, listed in ``manifest.json``. Memory stays bounded by one shard plus one
    batch. Calling it again on the same folder with the same arguments continues an interrupted collection
    (and returns at once for a finished one).

    Parameters
    ----------
    backbone : Backbone
        The model; ``forward_to(x, layer)`` runs under ``torch.no_grad``.
    dataset : Dataset
        Images, read in index order.
    layer : int
        Block whose output is read.
    tokens : {"patch", "cls", "all"}
        Tokens kept of each image (see :func:`token_slice`).
    out_dir : path
        Folder of the shards and the manifest (created).
    batch_size : int
        Images per forward pass.
    device : torch.device or str
        Where the backbone runs (it is moved there).
    shard_tokens : int
        Largest number of tokens (rows) in one shard.
    limit : int, optional
        Collect only the first ``limit`` images.
    progress : bool
        Show a progress bar over images.
    source : mapping, optional
        JSON-serialisable description of the backbone and data, recorded in the manifest and compared when
        collection resumes; defaults to :func:`describe_backbone` and the dataset's length.

    Returns
    -------
    ActivationManifest
        The manifest of the finished collection.

    Raises
    ------
    ActivationStoreError
        For a bad token set, a layer past the backbone's depth, or a folder that holds a collection made with
        other arguments.
    """
    if batch_size < 1 or shard_tokens < 1:
        raise ActivationStoreError(f"batch_size and shard_tokens must be >= 1, got {batch_size} and {shard_tokens}")
    if not 0 <= int(layer) < int(backbone.depth):
        raise ActivationStoreError(
            f"layer {layer} is past the backbone's {backbone.depth} blocks (valid: 0..{int(backbone.depth) - 1})"
        )
    positions = token_slice(backbone, tokens)
    num_images = len(dataset) if limit is None else min(int(limit), len(dataset))
    wanted = ActivationManifest(
        d_in=int(backbone.width),
        layer=int(layer),
        token_set=tokens,
        tokens_per_image=tokens_per_image(backbone, tokens),
        num_images=num_images,
        shard_tokens=int(shard_tokens),
        source=dict(source) if source is not None else {"backbone": describe_backbone(backbone),
                                                        "images": len(dataset)},
    )
    out_dir = pathlib.Path(out_dir)
    manifest = _open(out_dir, wanted)
    if manifest.complete:
        return manifest
    backbone.to(device=torch.device(device))
    writer = _ShardWriter(out_dir, manifest)
    per_image = manifest.tokens_per_image
    done = manifest.num_tokens
    # Restart at a batch boundary of an uninterrupted collection, so the batches (and the bits of every
    # token) are the same as if it had never stopped.
    first = (done // per_image // batch_size) * batch_size
    skip = done - first * per_image
    shown = done // per_image
    with tqdm(total=num_images, initial=shown, desc="activations", unit="img", disable=not progress) as bar:
        for start in range(first, num_images, batch_size):
            stop = min(start + batch_size, num_images)
            images = [dataset[i].image for i in range(start, stop)]
            with torch.no_grad():
                x = backbone.preprocess(images).to(torch.device(device))
                activations = backbone.forward_to(x, int(layer))
            _check_tokens(activations, stop - start, manifest, backbone)
            rows = activations[:, positions].reshape(-1, manifest.d_in).to("cpu", torch.float32).numpy()
            writer.add(rows[skip:])
            skip = max(0, skip - len(rows))
            bar.update(max(0, stop - shown))
            shown = stop
    writer.finish()
    return manifest


def write_activations(
    activations: Any,
    out_dir: str | pathlib.Path,
    *,
    layer: int,
    tokens: str = "patch",
    shard_tokens: int = 65536,
    source: Mapping[str, Any] | None = None,
) -> ActivationManifest:
    """Store activations computed elsewhere (an array ``[N, d_in]``) in the folder format training reads.

    Each row counts as one image of one token. The folder must be new or empty of a manifest.

    Raises
    ------
    ActivationStoreError
        If ``tokens`` is not a non-empty 2-D array, or ``out_dir`` already holds activations.
    """
    if isinstance(activations, torch.Tensor):
        activations = activations.detach().cpu()
    rows = np.asarray(activations, dtype=np.float32)
    if rows.ndim != 2 or not len(rows):
        raise ActivationStoreError(f"activations must be a non-empty [N, d_in] array, got shape {list(rows.shape)}")
    if tokens not in TOKEN_SETS:
        raise ActivationStoreError(f"tokens must be one of {TOKEN_SETS}, got {tokens!r}")
    out_dir = pathlib.Path(out_dir)
    if (out_dir / "manifest.json").exists():
        raise ActivationStoreError(f"{out_dir} already holds activations; write into a new folder")
    manifest = ActivationManifest(
        d_in=int(rows.shape[1]),
        layer=int(layer),
        token_set=tokens,
        tokens_per_image=1,
        num_images=len(rows),
        shard_tokens=int(shard_tokens),
        source=dict(source or {}),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = _ShardWriter(out_dir, manifest)
    writer.add(rows)
    writer.finish()
    return manifest


def _open(out_dir: pathlib.Path, wanted: ActivationManifest) -> ActivationManifest:
    """The manifest to continue: the folder's own if it matches ``wanted``, else ``wanted`` in a new folder."""
    try:
        existing = ActivationManifest.read(out_dir)
    except ActivationStoreError:
        if (out_dir / "manifest.json").exists():
            raise
        out_dir.mkdir(parents=True, exist_ok=True)
        wanted.write(out_dir)
        return wanted
    if existing.identity() != wanted.identity():
        differ = sorted(k for k, v in wanted.identity().items() if existing.identity().get(k) != v)
        raise ActivationStoreError(
            f"{out_dir} holds activations collected with other settings ({', '.join(differ)} differ); collect into "
            "another folder, or delete this one to start over"
        )
    return existing


def _check_tokens(tokens: torch.Tensor, images: int, manifest: ActivationManifest, backbone: Any) -> None:
    expected = len(backbone.prefix_tokens) + int(backbone.grid_size[0]) * int(backbone.grid_size[1])
    if tokens.dim() != 3 or tuple(tokens.shape) != (images, expected, manifest.d_in):
        raise ActivationStoreError(
            f"forward_to returned tokens of shape {list(tokens.shape)}, but the backbone's geometry implies "
            f"[{images}, {expected}, {manifest.d_in}] (prefix tokens + grid, width); the backbone breaks the "
            "Backbone contract"
        )


class _ShardWriter:
    """Buffers rows and writes them as shards of exactly ``shard_tokens`` rows (the last may be shorter)."""

    def __init__(self, directory: pathlib.Path, manifest: ActivationManifest) -> None:
        self.directory = directory
        self.manifest = manifest
        self.pending: list[np.ndarray] = []
        self.count = 0

    def add(self, rows: np.ndarray) -> None:
        if len(rows):
            self.pending.append(rows)
            self.count += len(rows)
        while self.count >= self.manifest.shard_tokens:
            self._flush(self.manifest.shard_tokens)

    def finish(self) -> None:
        if self.count:
            self._flush(self.count)
        self.manifest.complete = True
        self.manifest.write(self.directory)

    def _flush(self, n: int) -> None:
        rows = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        shard, rest = np.ascontiguousarray(rows[:n]), rows[n:]
        self.pending, self.count = ([rest] if len(rest) else []), len(rest)
        name = f"shard_{len(self.manifest.shards):06d}.npy"

        def write(tmp: pathlib.Path) -> None:
            with open(tmp, "wb") as handle:  # a path would make np.save append ".npy" to the temporary name
                np.save(handle, shard)

        atomic_write(self.directory / name, write)
        self.manifest.shards.append(ShardInfo(file=name, tokens=int(n)))
        self.manifest.write(self.directory)
