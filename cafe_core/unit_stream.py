"""The units of work of a run, streamed: the dataset is read a batch at a time, never listed whole up front.

Each batch of image indices is fingerprinted (:mod:`cafe_core.image_listing`), checked against what the run
store recorded for those images, and recorded, before its unit is handed out; memory is bounded by the batch
whatever the dataset's length. Units the store marks finished are passed over.
"""

from __future__ import annotations

import zlib
from typing import Callable, Iterator

from .image_listing import ImageEntry, current_listing, file_hash, reconcile
from .plan import RunPlan
from .records import WorkUnit
from .store import RunDirectoryError, RunStore

__all__ = ["stream_units", "unit_key"]

_SHOWN = 5


def unit_key(start: int, image_ids: list[str]) -> str:
    """A unit's key: its index range and a digest of its image ids, so that a changed listing never skips a batch."""
    digest = zlib.crc32("\n".join(image_ids).encode())
    return f"images[{start}:{start + len(image_ids)}]#{digest:08x}"


def stream_units(
    store: RunStore, plan: RunPlan, n_images: int, batch_size: int, *, on_skip: Callable[[WorkUnit], None]
) -> Iterator[WorkUnit]:
    """The units still to do over the first ``n_images`` images, one batch of images at a time.

    Parameters
    ----------
    store : RunStore
        The run's store: what is finished, and the fingerprints of the images it has seen.
    plan : RunPlan
        The run's plan (its dataset is read).
    n_images : int
        How many images of the dataset the run covers.
    batch_size : int
        Images per unit.
    on_skip : callable
        Called with each unit that is already finished.

    Raises
    ------
    RunDirectoryError
        When a batch holds an image whose content changed since the run computed it; the units before it
        have been handed out (and their results stay valid).

    Notes
    -----
    The store's listing is updated batch by batch; once the stream is exhausted, images the store knew but the
    dataset no longer holds are marked unlisted, so results leave them out.
    """
    finished = store.finished_units()
    listing_pass = store.begin_listing()
    for start in range(0, n_images, batch_size):
        entries = _checked_entries(store, plan, range(start, min(start + batch_size, n_images)))
        store.record_listing(entries, listing_pass)
        image_ids = tuple(e.image_id for e in entries)
        unit = WorkUnit(key=unit_key(start, list(image_ids)), indices=tuple(e.index for e in entries), image_ids=image_ids)
        if unit.key in finished:
            on_skip(unit)
        else:
            yield unit
    store.end_listing(listing_pass)


def _checked_entries(store: RunStore, plan: RunPlan, indices: range) -> list[ImageEntry]:
    """The fingerprints of a batch of images; refuse the batch if an image changed since it was computed."""
    current = current_listing(plan.dataset, indices)
    entries, changed = reconcile(
        current, store.image_entries([e.image_id for e in current]),
        lambda index: file_hash(plan.dataset.image_file(index)[1]),
    )
    if changed:
        shown = ", ".join(changed[:_SHOWN]) + (f" and {len(changed) - _SHOWN} more" if len(changed) > _SHOWN else "")
        raise RunDirectoryError(
            f"{len(changed)} image(s) changed since this run in {store.directory} computed them: {shown}; "
            "restore them to resume, or start a new output directory (a changed image under a new file name "
            "is a new image)"
        )
    return entries
