"""The run store: one SQLite file per run directory, append-only and transactional.

Every batch of results is written in one transaction, so a run that is killed loses at most the batch in
flight; running the same spec into the same directory reads what is there and computes only what is missing.
The store is the only state shared between workers, which is what lets an executor spread the work.
"""

from __future__ import annotations

import io
import json
import pathlib
import sqlite3
import time
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import CafeError

__all__ = ["RunStore", "RunDirectoryError", "encode_array", "decode_array"]

DB_NAME = "run.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS targets (
    image_id TEXT, layer INTEGER, latent INTEGER, position INTEGER,
    position_name TEXT, activation REAL, status TEXT,
    PRIMARY KEY (image_id, layer, latent, position));
CREATE TABLE IF NOT EXISTS heatmaps (
    image_id TEXT, layer INTEGER, latent INTEGER, position INTEGER, attributor TEXT,
    heatmap BLOB, info TEXT,
    PRIMARY KEY (image_id, layer, latent, position, attributor));
CREATE TABLE IF NOT EXISTS scores (
    image_id TEXT, layer INTEGER, latent INTEGER, position INTEGER, attributor TEXT, metric TEXT,
    score REAL, curve BLOB, raw_curve BLOB, fractions BLOB, info TEXT,
    PRIMARY KEY (image_id, layer, latent, position, attributor, metric));
CREATE TABLE IF NOT EXISTS units (unit TEXT PRIMARY KEY, finished REAL);
"""


class RunDirectoryError(CafeError):
    """The run directory cannot be used for this run."""


def encode_array(array: Any) -> bytes | None:
    """Serialise an array (or tensor) to ``.npy`` bytes; ``None`` stays ``None``."""
    if array is None:
        return None
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def decode_array(blob: bytes | None) -> np.ndarray | None:
    """Inverse of :func:`encode_array`."""
    if blob is None:
        return None
    return np.load(io.BytesIO(blob), allow_pickle=False)


def _float_or_none(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


class RunStore:
    """Results of one run, in ``<directory>/run.db``.

    Parameters
    ----------
    directory : path
        The run directory (created if missing).
    """

    def __init__(self, directory: str | pathlib.Path) -> None:
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / DB_NAME
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise RunDirectoryError(
                f"{self.path} is not a readable run store ({exc}); choose another output directory"
            ) from None

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

    # -- progress -------------------------------------------------------------------------------------
    def finished_units(self) -> set[str]:
        """Keys of the work units already complete."""
        return {row[0] for row in self._db.execute("SELECT unit FROM units")}

    def stored_work(self, image_ids: Sequence[str]) -> tuple[set[tuple], dict[tuple, set[str]]]:
        """What is already stored for these images, in two queries.

        Returns
        -------
        heatmaps : set of tuple
            ``(image_id, layer, latent, position, attributor)`` of every stored heatmap.
        scored : dict
            The metrics already scored for each such key that has scores.
        """
        marks = ",".join("?" * len(image_ids))
        columns = "image_id, layer, latent, position, attributor"
        heatmaps = {
            tuple(row)
            for row in self._db.execute(f"SELECT {columns} FROM heatmaps WHERE image_id IN ({marks})", list(image_ids))
        }
        scored: dict[tuple, set[str]] = {}
        for *key, metric in self._db.execute(
            f"SELECT {columns}, metric FROM scores WHERE image_id IN ({marks})", list(image_ids)
        ):
            scored.setdefault(tuple(key), set()).add(metric)
        return heatmaps, scored

    def heatmap(self, key: tuple, attributor: str) -> np.ndarray | None:
        """A stored heatmap ``[gh, gw]``, or ``None``."""
        row = self._db.execute(
            "SELECT heatmap FROM heatmaps WHERE image_id=? AND layer=? AND latent=? AND position=? AND attributor=?",
            (*key, attributor),
        ).fetchone()
        return decode_array(row[0]) if row else None

    # -- writes ---------------------------------------------------------------------------------------
    def write_batch(
        self,
        *,
        targets: Iterable[tuple] = (),
        heatmaps: Iterable[tuple] = (),
        scores: Iterable[tuple] = (),
        unit: str | None = None,
    ) -> None:
        """Write one batch of rows in a single transaction.

        Parameters
        ----------
        targets : iterable of (image_id, layer, latent, position, position_name, activation, status)
        heatmaps : iterable of (image_id, layer, latent, position, attributor, heatmap, info dict)
        scores : iterable of (image_id, layer, latent, position, attributor, metric, score, curve,
            raw_curve, fractions, info dict)
        unit : str, optional
            Mark this work unit finished in the same transaction.
        """
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR IGNORE INTO targets VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(*t[:5], _float_or_none(t[5]), t[6]) for t in targets],
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO heatmaps VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(*h[:5], encode_array(h[5]), json.dumps(h[6])) for h in heatmaps],
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (*s[:6], _float_or_none(s[6]), *(encode_array(a) for a in s[7:10]), json.dumps(s[10]))
                    for s in scores
                ],
            )
            if unit is not None:
                self._db.execute("INSERT OR REPLACE INTO units VALUES (?, ?)", (unit, time.time()))

    # -- reads ----------------------------------------------------------------------------------------
    def target_rows(self) -> list[dict[str, Any]]:
        """Every target considered, explained or not (``status`` says which)."""
        cursor = self._db.execute("SELECT * FROM targets ORDER BY image_id, layer, latent, position")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor]

    def score_rows(self) -> list[dict[str, Any]]:
        """The tidy table: one row per (image, target, attributor, metric)."""
        cursor = self._db.execute(
            """SELECT s.image_id, s.layer, s.latent, s.position, t.position_name, t.activation,
                      s.attributor, s.metric, s.score, s.info
               FROM scores s JOIN targets t USING (image_id, layer, latent, position)
               ORDER BY s.image_id, s.layer, s.latent, s.position, s.attributor, s.metric"""
        )
        rows = []
        for row in cursor:
            *head, info = row
            record = dict(
                zip(
                    ["image_id", "layer", "latent", "position", "position_name", "activation", "attributor",
                     "metric", "score"],
                    head,
                )
            )
            record["score"] = float("nan") if record["score"] is None else record["score"]
            record.update({f"info.{k}": v for k, v in json.loads(info).items()})
            rows.append(record)
        return rows

    def curve(self, key: tuple, attributor: str, metric: str) -> dict[str, np.ndarray | None] | None:
        """The stored curve, raw curve and fractions of one score, or ``None``."""
        row = self._db.execute(
            """SELECT curve, raw_curve, fractions FROM scores WHERE image_id=? AND layer=? AND latent=?
               AND position=? AND attributor=? AND metric=?""",
            (*key, attributor, metric),
        ).fetchone()
        if row is None:
            return None
        return dict(zip(("curve", "raw_curve", "fractions"), map(decode_array, row)))

    def heatmap_rows(self) -> list[dict[str, Any]]:
        """Keys and info of every stored heatmap (the arrays via :meth:`heatmap`)."""
        cursor = self._db.execute(
            "SELECT image_id, layer, latent, position, attributor, info FROM heatmaps "
            "ORDER BY image_id, layer, latent, position, attributor"
        )
        return [
            {"image_id": r[0], "layer": r[1], "latent": r[2], "position": r[3], "attributor": r[4],
             **{f"info.{k}": v for k, v in json.loads(r[5]).items()}}
            for r in cursor
        ]
