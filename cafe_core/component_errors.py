"""Any exception a component raises during a run becomes one :class:`ComponentError` that names it."""

from __future__ import annotations

import contextlib
from typing import Iterator

from .errors import CafeError

__all__ = ["ComponentError", "blame"]


class ComponentError(CafeError):
    """A component (backbone, SAE, dataset, attributor, metric) raised an exception during a run.

    The original exception is the ``__cause__``; the CLI shows its traceback under ``--debug``.
    """


@contextlib.contextmanager
def blame(component: str, doing: str) -> Iterator[None]:
    """Re-raise any non-cafe exception of the block as a :class:`ComponentError` naming ``component``.

    Parameters
    ----------
    component : str
        The component as the spec names it, e.g. ``"attributor 'attnlrp'"``.
    doing : str
        What it was doing, e.g. ``"explaining latent 7 at layer 1 of img0.png"``.
    """
    try:
        yield
    except CafeError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of a plugin's code is reported the same way
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise ComponentError(
            f"{component} failed while {doing}: {type(exc).__name__}: {first_line}; results committed before it "
            "are kept: fix the cause (rerun with --debug for the traceback, and report it to the component's "
            "plugin if it is a bug there) or leave the component out, then rerun the same command to resume"
        ) from exc
