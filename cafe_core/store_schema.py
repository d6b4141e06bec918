"""The run store's tables, derived from the fields of the run's records (:mod:`cafe_core.records`).

A record's ``key`` field becomes the key columns of :class:`~cafe_core.records.TargetKey`; every other field
becomes a column whose SQL type follows its annotation (arrays as ``.npy`` bytes, dicts as JSON). Adding a
field to a record therefore adds the column; nothing else lists the columns.
"""

from __future__ import annotations

import dataclasses
import io
import json
from typing import Any

import numpy as np

from .records import KEY_FIELDS, HeatmapRecord, ScoreRecord, TargetKey, TargetRecord

__all__ = ["HEATMAPS", "SCORES", "TARGETS", "Table", "decode_array", "encode_array"]


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


def _finite_or_none(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _none_to_nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


# annotation (as written in records.py) -> (SQL type, to the database, from the database)
_CODECS: dict[str, tuple[str, Any, Any]] = {
    "str": ("TEXT", str, str),
    "int": ("INTEGER", int, int),
    "float": ("REAL", _finite_or_none, _none_to_nan),
    "np.ndarray": ("BLOB", encode_array, decode_array),
    "np.ndarray | None": ("BLOB", encode_array, decode_array),
    "dict[str, float]": ("TEXT", json.dumps, json.loads),
}


class Table:
    """One table of the store: the rows of one record type.

    Parameters
    ----------
    name : str
        Table name.
    record : type
        The record dataclass; its ``key`` field expands to the :class:`TargetKey` columns.
    key : tuple of str
        The other fields that, with the target key, identify a row (the primary key).
    """

    def __init__(self, name: str, record: type, key: tuple[str, ...]) -> None:
        self.name = name
        self.record = record
        self.fields = [f for f in dataclasses.fields(record) if f.name != "key"]
        # records.py postpones annotations, so each field's type is its annotation as written
        self._codecs = {f.name: _CODECS[f.type] for f in self.fields}
        self.columns = (*KEY_FIELDS, *(f.name for f in self.fields))
        self.primary_key = (*KEY_FIELDS, *key)
        key_types = {f.name: _CODECS[f.type][0] for f in dataclasses.fields(TargetKey)}
        types = {**key_types, **{name: codec[0] for name, codec in self._codecs.items()}}
        columns = ", ".join(f"{c} {types[c]}" for c in self.columns)
        self.create = f"CREATE TABLE IF NOT EXISTS {name} ({columns}, PRIMARY KEY ({', '.join(self.primary_key)}))"
        self.insert = f"INTO {name} ({', '.join(self.columns)}) VALUES ({', '.join('?' * len(self.columns))})"

    def to_row(self, record: Any) -> tuple[Any, ...]:
        """The database row of a record."""
        values = [self._codecs[f.name][1](getattr(record, f.name)) for f in self.fields]
        return (*record.key.as_tuple(), *values)

    def from_row(self, row: tuple[Any, ...]) -> Any:
        """The record of a database row (in :attr:`columns` order)."""
        key = TargetKey(*row[: len(KEY_FIELDS)])
        values = {f.name: self._codecs[f.name][2](v) for f, v in zip(self.fields, row[len(KEY_FIELDS) :])}
        return self.record(key=key, **values)


TARGETS = Table("targets", TargetRecord, ())
HEATMAPS = Table("heatmaps", HeatmapRecord, ("attributor",))
SCORES = Table("scores", ScoreRecord, ("attributor", "metric"))
