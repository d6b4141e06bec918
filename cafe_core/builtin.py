"""The core's own components, registered on every plugin host as a plugin's are: the in-process executor."""

from __future__ import annotations

from .hookspecs import hookimpl

PLUGIN_NAME = "core"


@hookimpl
def cafe_register_executors(register):
    """Register ``inprocess``, the default executor."""
    register(
        "inprocess",
        "cafe_core.executors:InProcessExecutor",
        description="Units one after another in this process (the default)",
    )
