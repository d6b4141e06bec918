"""Read a folder of activation shards: slices, samples, and shuffled minibatches with bounded memory."""

from __future__ import annotations

import pathlib
from typing import Iterator

import numpy as np
import torch

from .errors import ActivationStoreError
from .manifest import ActivationManifest

__all__ = ["ActivationStore"]


class ActivationStore:
    """The tokens collected by :func:`~cafe_sae.training.activations.collect_activations`.

    Token ``t`` is row ``t`` of the concatenation of the shards, in manifest order. Shards are memory-mapped,
    so only the rows asked for are read.

    Parameters
    ----------
    directory : path
        A folder holding ``manifest.json`` and its shards.
    require_complete : bool
        Refuse a folder whose collection has not finished.

    Raises
    ------
    ActivationStoreError
        For a missing or unfinished collection, or a shard that is missing or has the wrong shape.
    """

    def __init__(self, directory: str | pathlib.Path, *, require_complete: bool = True) -> None:
        self.directory = pathlib.Path(directory)
        self.manifest = ActivationManifest.read(self.directory)
        if require_complete and not self.manifest.complete:
            raise ActivationStoreError(
                f"the collection in {self.directory} is unfinished ({self.manifest.images_done} of "
                f"{self.manifest.num_images} images); run the collection again to finish it"
            )
        self._bounds = np.cumsum([0] + [shard.tokens for shard in self.manifest.shards])

    @property
    def d_in(self) -> int:
        """Width of each token."""
        return self.manifest.d_in

    @property
    def num_tokens(self) -> int:
        """Number of tokens (rows) stored."""
        return int(self._bounds[-1])

    def __len__(self) -> int:
        return self.num_tokens

    def shard(self, index: int) -> np.ndarray:
        """Shard ``index`` as a read-only memory-mapped ``[tokens, d_in]`` float32 array."""
        info = self.manifest.shards[index]
        path = self.directory / info.file
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise ActivationStoreError(
                f"cannot read shard {path} ({exc}); delete {self.directory} and collect the activations again"
            ) from None
        if array.shape != (info.tokens, self.d_in) or array.dtype != np.float32:
            raise ActivationStoreError(
                f"shard {path} holds a {array.dtype} array of shape {list(array.shape)}, but the manifest records "
                f"[{info.tokens}, {self.d_in}] float32; delete {self.directory} and collect again"
            )
        return array

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``start..stop-1`` as a ``[stop - start, d_in]`` float32 array (in memory)."""
        start, stop = max(0, int(start)), min(int(stop), self.num_tokens)
        pieces = [self.shard(i)[lo:hi] for i, lo, hi in self._pieces(start, stop)]
        if not pieces:
            return np.zeros((0, self.d_in), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(pieces))

    def sample(self, n: int, *, seed: int = 0, stop: int | None = None) -> np.ndarray:
        """``n`` tokens drawn without replacement (seeded) among the first ``stop`` (all by default)."""
        stop = self.num_tokens if stop is None else min(int(stop), self.num_tokens)
        rng = np.random.default_rng([int(seed), 0x5A3])
        index = np.sort(rng.choice(stop, size=min(int(n), stop), replace=False))
        shard_of = np.searchsorted(self._bounds, index, side="right") - 1
        out = np.empty((len(index), self.d_in), dtype=np.float32)
        for shard in np.unique(shard_of):
            mask = shard_of == shard
            out[mask] = self.shard(int(shard))[index[mask] - self._bounds[shard]]
        return out

    def batches(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        start: int = 0,
        stop: int | None = None,
        shards_in_memory: int = 4,
    ) -> Iterator[torch.Tensor]:
        """An endless stream of shuffled minibatches ``[batch_size, d_in]`` over tokens ``0..stop-1``.

        Each epoch visits the shards (clipped to ``stop``) in a seeded random order, ``shards_in_memory`` at a
        time; the tokens of those shards are shuffled together and cut into batches, a batch running on into
        the next group (and the next epoch) when a group ends. The stream is a fixed function of ``seed``,
        ``stop``, ``shards_in_memory`` and ``batch_size``: batch ``k`` holds its tokens ``k * batch_size`` to
        ``(k + 1) * batch_size - 1``, and ``start`` skips that many tokens of it without reading them, which is
        how training resumes exactly.

        Parameters
        ----------
        batch_size : int
            Rows per batch.
        seed : int
            Seed of the shuffling (``>= 0``).
        start : int
            Position in the stream to begin at (a multiple of ``batch_size`` to resume after that many batches).
        stop : int, optional
            Use tokens ``0..stop-1`` only (the rest is held out); default all.
        shards_in_memory : int
            Shards shuffled together; memory holds about that many shards plus one batch.
        """
        stop = self.num_tokens if stop is None else min(int(stop), self.num_tokens)
        if stop < 1 or batch_size < 1 or shards_in_memory < 1:
            raise ActivationStoreError(
                f"cannot draw batches of {batch_size} from {stop} tokens with {shards_in_memory} shards in memory"
            )
        pieces = list(self._pieces(0, stop))
        epoch, offset = divmod(int(start), stop)
        carry = np.zeros((0, self.d_in), dtype=np.float32)
        while True:
            for rows in self._epoch(pieces, seed, epoch, offset, shards_in_memory):
                data = np.concatenate([carry, rows]) if len(carry) else rows
                full = len(data) // batch_size * batch_size
                for i in range(0, full, batch_size):
                    yield torch.from_numpy(np.array(data[i : i + batch_size]))
                carry = np.array(data[full:])
            epoch, offset = epoch + 1, 0

    def _epoch(
        self, pieces: list[tuple[int, int, int]], seed: int, epoch: int, offset: int, per_group: int
    ) -> Iterator[np.ndarray]:
        """The shuffled groups of one epoch, from token ``offset`` of that epoch on."""
        order = np.random.default_rng([int(seed), int(epoch)]).permutation(len(pieces))
        begin = 0
        for group, first in enumerate(range(0, len(order), per_group)):
            members = [pieces[i] for i in order[first : first + per_group]]
            size = sum(hi - lo for _, lo, hi in members)
            if begin + size > offset:
                rows = np.concatenate([self.shard(i)[lo:hi] for i, lo, hi in members])
                rows = rows[np.random.default_rng([int(seed), int(epoch), group]).permutation(len(rows))]
                yield rows[max(0, offset - begin) :]
            begin += size

    def _pieces(self, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
        """``(shard, lo, hi)``: the rows of each shard that lie in tokens ``start..stop-1``."""
        for i in range(len(self.manifest.shards)):
            lo, hi = max(start, self._bounds[i]), min(stop, self._bounds[i + 1])
            if lo < hi:
                yield i, int(lo - self._bounds[i]), int(hi - self._bounds[i])
