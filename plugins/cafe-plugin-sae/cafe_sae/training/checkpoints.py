"""Training checkpoints: model, optimiser, step and RNG state, enough to continue bit for bit."""

from __future__ import annotations

import pathlib
import re
from typing import Any

import torch

from .errors import TrainingError
from .files import atomic_write

__all__ = ["latest_checkpoint", "restore_rng", "rng_state", "save_checkpoint"]

_NAME = re.compile(r"^checkpoint-(\d+)\.pt$")


def rng_state() -> dict[str, Any]:
    """The torch RNG states (CPU, and every CUDA device when available)."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back RNG states saved by :func:`rng_state`."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: pathlib.Path, state: dict[str, Any], *, keep: int = 2) -> pathlib.Path:
    """Write ``state`` (which holds ``"step"``) to ``checkpoint-<step>.pt`` and delete all but the ``keep`` newest.

    The file is written atomically, so an interruption leaves the previous checkpoints intact.
    """
    directory = pathlib.Path(directory)
    path = directory / f"checkpoint-{int(state['step']):09d}.pt"
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    for old in _checkpoints(directory)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def latest_checkpoint(directory: pathlib.Path | None) -> tuple[pathlib.Path, dict[str, Any]] | None:
    """The newest checkpoint of ``directory`` that can be read, or None when there is none.

    Raises
    ------
    TrainingError
        If checkpoint files exist but none can be read.
    """
    if directory is None:
        return None
    found = _checkpoints(pathlib.Path(directory))
    failures = []
    for path in reversed(found):
        try:
            return path, torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged file: fall back to the one before it
            failures.append(f"{path.name}: {type(exc).__name__}: {exc}")
    if failures:
        raise TrainingError(
            f"no checkpoint in {directory} can be read ({'; '.join(failures)}); delete the folder to train from "
            "the start"
        )
    return None


def _checkpoints(directory: pathlib.Path) -> list[pathlib.Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name))
