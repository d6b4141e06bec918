"""``report(run_dir)``: a run directory as an HTML report, written by whichever plugin provides the ``report`` command.

The core draws nothing itself. A plugin that registers the command ``report`` (cafe-plugin-report does)
gives its command class a ``write(run_dir, out=None, **options) -> pathlib.Path`` method; this function finds
that registration through the plugin registry and calls it, so the core never imports the plugin.
"""

from __future__ import annotations

import pathlib
from typing import Any

from .errors import CafeError, UnknownComponentError

__all__ = ["ReportUnavailableError", "report"]

_INSTALL_HINT = "install a report plugin (`pip install -e plugins/cafe-plugin-report` in a checkout of cafe)"


class ReportUnavailableError(CafeError):
    """No installed plugin can write a report."""


def report(run_dir: str | pathlib.Path, out: str | pathlib.Path | None = None, *, host: Any = None,
           **options: Any) -> pathlib.Path:
    """Write the HTML report of a run directory.

    Parameters
    ----------
    run_dir : path
        A run directory (the ``out`` of :func:`cafe_core.run`); finished or partial.
    out : path, optional
        The report folder; by default the plugin's (``<run_dir>/report`` for cafe-plugin-report).
    host : PluginHost, optional
        The plugins to use (to find the report plugin and to rebuild the run's components); defaults to every
        installed plugin.
    **options
        Passed to the plugin (for cafe-plugin-report: ``max_targets``, ``reference``, ``sanity_targets``...;
        see ``cafe report --help``).

    Returns
    -------
    pathlib.Path
        The report's main page.

    Raises
    ------
    ReportUnavailableError
        If no installed plugin registers the ``report`` command, or the one that does cannot write a report
        from Python.
    """
    from .plugins import get_host

    host = host or get_host()
    try:
        registration = host.registry("command").get("report")
    except UnknownComponentError as exc:
        raise ReportUnavailableError(f"no plugin provides reports ({exc}); {_INSTALL_HINT}") from None
    command = registration.build()
    write = getattr(command, "write", None)
    if not callable(write):
        raise ReportUnavailableError(
            f"the `report` command of plugin {registration.plugin!r} has no write(run_dir, out=None, **options) "
            f"method, so it cannot be used from Python; run `cafe report {run_dir}` instead, or {_INSTALL_HINT}"
        )
    if host is not None:
        options["host"] = host  # the run's spec is rebuilt with the same plugins
    return pathlib.Path(write(run_dir, out=out, **options))
