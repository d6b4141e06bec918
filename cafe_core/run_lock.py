"""One run at a time per run directory: an exclusive lock on ``<directory>/run.lock``.

The lock is an OS file lock (``flock``), so it is released when the process ends in any way, a SIGKILL
included, and a stale lock file never blocks a resumed run. The file holds the owner's pid and host name,
which the refusal of a second run names.
"""

from __future__ import annotations

import os
import pathlib
import socket
from typing import Any

from .errors import CafeError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["LOCK_NAME", "RunInUseError", "RunLock"]

LOCK_NAME = "run.lock"


class RunInUseError(CafeError):
    """Another process is running into the same run directory."""


class RunLock:
    """Hold ``<directory>/run.lock`` for the duration of a ``with`` block.

    Parameters
    ----------
    directory : path
        The run directory (it must exist).

    Raises
    ------
    RunInUseError
        On entering, if another process holds the lock.
    """

    def __init__(self, directory: str | pathlib.Path) -> None:
        self.directory = pathlib.Path(directory)
        self.path = self.directory / LOCK_NAME
        self._handle: Any = None

    def __enter__(self) -> "RunLock":
        handle = open(self.path, "a+", encoding="utf-8")
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                owner = handle.read().strip() or "unknown"
                handle.close()
                raise RunInUseError(
                    f"{self.directory} is in use by another cafe run ({owner}, which holds {self.path}); "
                    "wait for it to finish or stop it, or choose another output directory"
                ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file releases the lock
            self._handle = None
