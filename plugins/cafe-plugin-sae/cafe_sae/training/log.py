"""The metrics log of a training run: one JSON object per line."""

from __future__ import annotations

import json
import pathlib
from typing import Any

from .files import atomic_write

__all__ = ["MetricsLog", "read_metrics_log"]


def read_metrics_log(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """The records of a metrics log, in order (a half-written last line is ignored)."""
    records = []
    path = pathlib.Path(path)
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


class MetricsLog:
    """Appends records ``{"kind": ..., "step": ..., ...}`` to a JSON-lines file.

    Parameters
    ----------
    path : path or None
        The file; None keeps nothing.
    resume_step : int or None
        When training resumes from a checkpoint of this step, the records written after it (which the
        resumed run writes again) and any ``"final"`` record are dropped; None starts a new log.
    """

    def __init__(self, path: str | pathlib.Path | None, resume_step: int | None = None) -> None:
        self.path = None if path is None else pathlib.Path(path)
        if self.path is None:
            return
        kept = []
        if resume_step is not None:
            kept = [
                r for r in read_metrics_log(self.path) if r.get("kind") != "final" and r.get("step", 0) <= resume_step
            ]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        atomic_write(self.path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def write(self, record: dict[str, Any]) -> None:
        """Append one record."""
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
