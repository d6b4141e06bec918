"""The run store: one SQLite file per run directory, append-only and transactional.

Every batch of results is written in one transaction, so a run that is killed loses at most the batch in
flight; running the same spec into the same directory reads what is there and computes only what is missing.
The store is the only state shared between workers, which is what lets an executor spread the work.
"""

from __future__ import annotations

import json
import pathlib
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import CafeError
from .image_listing import ImageEntry
from .records import KEY_FIELDS, HeatmapRecord, ScoreRecord, TargetKey, TargetRecord, UnitResult
from .store_schema import HEATMAPS, SCORES, TARGETS, decode_array

__all__ = ["RunStore", "RunDirectoryError", "StoredUnit", "StoredWork", "make_run_directory"]

DB_NAME = "run.db"

_SCHEMA = ";\n".join(
    [
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        TARGETS.create,
        HEATMAPS.create,
        SCORES.create,
        "CREATE TABLE IF NOT EXISTS units (unit TEXT PRIMARY KEY, finished REAL)",
        # every image the run has seen, its fingerprint, and whether it is in the dataset's current listing
        "CREATE TABLE IF NOT EXISTS images (image_id TEXT PRIMARY KEY, idx INTEGER, size INTEGER, "
        "mtime_ns INTEGER, sha256 TEXT NOT NULL, listed INTEGER NOT NULL)",
    ]
)
_IN_LIMIT = 500  # ids per "IN (...)" query, under SQLite's limit on bound variables
_KEY_MATCH = " AND ".join(f"{name} = ?" for name in KEY_FIELDS)


class RunDirectoryError(CafeError):
    """The run directory cannot be used for this run."""


def make_run_directory(directory: pathlib.Path) -> None:
    """Create ``directory`` (and its parents) unless it exists; raise :class:`RunDirectoryError` if it cannot be."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocking = next(p for p in (directory, *directory.parents) if p.exists())
        raise RunDirectoryError(
            f"cannot use {directory} as a run directory: {blocking} is a file, not a directory; "
            "choose another output directory"
        ) from None
    except OSError as exc:
        raise RunDirectoryError(
            f"cannot create the run directory {directory} ({exc.strerror}); choose another output directory"
        ) from None


@dataclass
class StoredWork:
    """What the store already holds for some images.

    Attributes
    ----------
    heatmaps : set of (TargetKey, str)
        ``(target, attributor)`` of every stored heatmap.
    scored : dict
        The metrics already scored for each ``(target, attributor)`` that has scores.
    """

    heatmaps: set[tuple[TargetKey, str]] = field(default_factory=set)
    scored: dict[tuple[TargetKey, str], set[str]] = field(default_factory=dict)

    def missing_metrics(self, key: TargetKey, attributor: str, metrics: Iterable[str]) -> set[str]:
        """The metrics of ``metrics`` not yet scored for this target and attributor."""
        return set(metrics) - self.scored.get((key, attributor), set())

    def has_heatmap(self, key: TargetKey, attributor: str) -> bool:
        """Whether this target's heatmap by this attributor is stored."""
        return (key, attributor) in self.heatmaps


@dataclass
class StoredUnit:
    """What the store holds for the images of one unit, read by the driver for a worker that cannot read it.

    It answers the two questions a :class:`~cafe_core.worker.UnitWorker` asks the store, for the unit's
    images only, and pickles to another process or machine.

    Attributes
    ----------
    work : StoredWork
        The heatmaps and scores stored for the unit's images.
    heatmaps : dict
        The stored heatmaps ``[gh, gw]`` that still lack a score, by ``(target, attributor)``: the only
        ones a worker reads back.
    """

    work: StoredWork = field(default_factory=StoredWork)
    heatmaps: dict[tuple[TargetKey, str], np.ndarray] = field(default_factory=dict)

    def stored_work(self, image_ids: Sequence[str]) -> StoredWork:
        """What is stored for the unit's images (``image_ids`` are those images)."""
        return self.work

    def heatmap(self, key: TargetKey, attributor: str) -> np.ndarray | None:
        """A stored heatmap, or ``None``."""
        return self.heatmaps.get((key, attributor))


class RunStore:
    """Results of one run, in ``<directory>/run.db``.

    Parameters
    ----------
    directory : path
        The run directory (created if missing).
    """

    def __init__(self, directory: str | pathlib.Path) -> None:
        self.directory = pathlib.Path(directory)
        make_run_directory(self.directory)
        self.path = self.directory / DB_NAME
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._add_sae_column()
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise RunDirectoryError(
                f"{self.path} is not a readable run store ({exc}); choose another output directory"
            ) from None

    def _add_sae_column(self) -> None:
        """Give the tables of a store written before keys named their SAE the ``sae`` key column.

        The column joins the primary key, so each table is rebuilt (in one transaction). The value is the
        label of the stored spec's SAE; a store of several SAEs cannot tell whose rows are whose and is refused.
        """
        tables = [t for t in (TARGETS, HEATMAPS, SCORES) if self._columns(t.name)]
        if not tables or all("sae" in self._columns(t.name) for t in tables):
            return
        row = self._db.execute("SELECT value FROM meta WHERE key = 'spec'").fetchone()
        sections = json.loads(row[0]).get("sae", []) if row else []
        if len(sections) != 1:
            self._db.close()
            raise RunDirectoryError(
                f"{self.directory} holds a run written before results were kept apart per SAE, and its "
                f"{len(sections)} SAEs cannot be told apart in it; start the run again in a new output directory"
            )
        label = sections[0].get("label") or sections[0]["name"]
        with self._db:
            self._db.execute("BEGIN")
            for table in tables:
                old = [c for c in table.columns if c != "sae"]
                self._db.execute(f"ALTER TABLE {table.name} RENAME TO {table.name}_before_sae")
                self._db.execute(table.create)
                self._db.execute(
                    f"INSERT INTO {table.name} (sae, {', '.join(old)}) "
                    f"SELECT ?, {', '.join(old)} FROM {table.name}_before_sae",
                    (label,),
                )
                self._db.execute(f"DROP TABLE {table.name}_before_sae")

    def _columns(self, table: str) -> list[str]:
        return [row[1] for row in self._db.execute(f"PRAGMA table_info({table})")]

    @classmethod
    def open_existing(cls, directory: str | pathlib.Path) -> "RunStore":
        """Open a finished or partial run for reading."""
        path = pathlib.Path(directory) / DB_NAME
        if not path.is_file():
            raise RunDirectoryError(f"{directory} is not a cafe run directory (no {DB_NAME}); pass the --out of a run")
        return cls(directory)

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- metadata -------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        """A stored metadata value (JSON-decoded), or ``None``."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable metadata value."""
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value, sort_keys=True)))

    # -- images ---------------------------------------------------------------------------------------
    def image_entries(self, image_ids: Sequence[str] | None = None) -> dict[str, ImageEntry]:
        """The fingerprinted images, by id: all of them, or those of ``image_ids`` that the run has seen."""
        columns = "SELECT image_id, idx, size, mtime_ns, sha256 FROM images"
        if image_ids is None:
            return {row[0]: ImageEntry(*row) for row in self._db.execute(columns)}
        found: dict[str, ImageEntry] = {}
        for start in range(0, len(image_ids), _IN_LIMIT):
            part = list(image_ids[start : start + _IN_LIMIT])
            rows = self._db.execute(f"{columns} WHERE image_id IN ({','.join('?' * len(part))})", part)
            found.update((row[0], ImageEntry(*row)) for row in rows)
        return found

    # A listing is recorded in passes: each run stamps the images it streams with a new pass number, and a pass
    # that reaches the end of the dataset unlists (stamps 0) the images it did not see.
    def begin_listing(self) -> int:
        """The number of a new listing pass."""
        return self._db.execute("SELECT COALESCE(MAX(listed), 0) + 1 FROM images").fetchone()[0]

    def record_listing(self, entries: Sequence[ImageEntry], listing_pass: int) -> None:
        """Record the fingerprints of some images of the dataset, as seen in ``listing_pass``."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?, ?)",
                [(e.image_id, e.index, e.size, e.mtime_ns, e.sha256, listing_pass) for e in entries],
            )

    def end_listing(self, listing_pass: int) -> None:
        """Unlist every image that the complete pass ``listing_pass`` did not see."""
        self._db.execute("UPDATE images SET listed = 0 WHERE listed != ?", (listing_pass,))

    def listed_images(self) -> set[str] | None:
        """The ids of the current listing, or ``None`` for a store written before listings were recorded."""
        if self._db.execute("SELECT 1 FROM images LIMIT 1").fetchone() is None:
            return None
        return {row[0] for row in self._db.execute("SELECT image_id FROM images WHERE listed != 0")}

    # -- progress -------------------------------------------------------------------------------------
    def finished_units(self) -> set[str]:
        """Keys of the work units already complete."""
        return {row[0] for row in self._db.execute("SELECT unit FROM units")}

    def stored_work(self, image_ids: Sequence[str]) -> StoredWork:
        """What is already stored for these images (two queries)."""
        marks = ",".join("?" * len(image_ids))
        keys = ", ".join(KEY_FIELDS)
        n = len(KEY_FIELDS)
        stored = StoredWork()
        for row in self._db.execute(
            f"SELECT {keys}, attributor FROM heatmaps WHERE image_id IN ({marks})", list(image_ids)
        ):
            stored.heatmaps.add((TargetKey(*row[:n]), row[n]))
        for row in self._db.execute(
            f"SELECT {keys}, attributor, metric FROM scores WHERE image_id IN ({marks})", list(image_ids)
        ):
            stored.scored.setdefault((TargetKey(*row[:n]), row[n]), set()).add(row[n + 1])
        return stored

    def stored_unit(self, image_ids: Sequence[str], metrics: Iterable[str]) -> StoredUnit:
        """What a worker elsewhere needs of the store to compute a unit of these images.

        Parameters
        ----------
        image_ids : sequence of str
            The unit's images.
        metrics : iterable of str
            The run's metric labels: a stored heatmap missing any of their scores is included.
        """
        work, metrics = self.stored_work(image_ids), list(metrics)
        needed = [pair for pair in work.heatmaps if work.missing_metrics(*pair, metrics)]
        return StoredUnit(work, {pair: self.heatmap(*pair) for pair in needed})

    def heatmap(self, key: TargetKey, attributor: str) -> np.ndarray | None:
        """A stored heatmap ``[gh, gw]``, or ``None``."""
        row = self._db.execute(
            f"SELECT heatmap FROM heatmaps WHERE {_KEY_MATCH} AND attributor = ?", (*key.as_tuple(), attributor)
        ).fetchone()
        return decode_array(row[0]) if row else None

    # -- writes ---------------------------------------------------------------------------------------
    def write(self, result: UnitResult) -> None:
        """Write (a piece of) a unit's result in a single transaction.

        A target already stored is kept as it is; a heatmap or score is replaced. A ``complete`` result marks
        its unit finished in the same transaction.
        """
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(f"INSERT OR IGNORE {TARGETS.insert}", [TARGETS.to_row(r) for r in result.targets])
            self._db.executemany(f"INSERT OR REPLACE {HEATMAPS.insert}", [HEATMAPS.to_row(r) for r in result.heatmaps])
            self._db.executemany(f"INSERT OR REPLACE {SCORES.insert}", [SCORES.to_row(r) for r in result.scores])
            if result.complete:
                self._db.execute("INSERT OR REPLACE INTO units VALUES (?, ?)", (result.unit, time.time()))

    # -- reads ----------------------------------------------------------------------------------------
    def targets(self) -> list[TargetRecord]:
        """Every target considered, explained or not."""
        order = ", ".join(KEY_FIELDS)
        cursor = self._db.execute(f"SELECT {', '.join(TARGETS.columns)} FROM targets ORDER BY {order}")
        return [TARGETS.from_row(row) for row in cursor]

    def scores(self) -> list[ScoreRecord]:
        """Every score, with its curves."""
        order = ", ".join(SCORES.primary_key)
        cursor = self._db.execute(f"SELECT {', '.join(SCORES.columns)} FROM scores ORDER BY {order}")
        return [SCORES.from_row(row) for row in cursor]

    def heatmap_records(self, *, arrays: bool = True) -> list[HeatmapRecord]:
        """Every stored heatmap (with ``arrays=False``, keys and info only: each ``heatmap`` is ``None``)."""
        columns = [c if c != "heatmap" or arrays else "NULL" for c in HEATMAPS.columns]
        order = ", ".join(HEATMAPS.primary_key)
        cursor = self._db.execute(f"SELECT {', '.join(columns)} FROM heatmaps ORDER BY {order}")
        return [HEATMAPS.from_row(row) for row in cursor]

    def curve(self, key: TargetKey, attributor: str, metric: str) -> dict[str, np.ndarray | None] | None:
        """The stored curve, raw curve and fractions of one score, or ``None``."""
        row = self._db.execute(
            f"SELECT curve, raw_curve, fractions FROM scores WHERE {_KEY_MATCH} AND attributor = ? AND metric = ?",
            (*key.as_tuple(), attributor, metric),
        ).fetchone()
        if row is None:
            return None
        return dict(zip(("curve", "raw_curve", "fractions"), map(decode_array, row)))
