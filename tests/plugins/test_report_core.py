"""``cafe_core.report`` finds the report through the plugin registry, and says how to get one when none is installed."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

import cafe_core
from cafe_core import hookimpl
from cafe_core.errors import CafeError
from cafe_core.plugins import PluginHost
from cafe_core.reporting import ReportUnavailableError


class _RecordingReport:
    calls: list = []

    def configure(self, parser):
        parser.add_argument("run_dir")

    def run(self, args):
        return 0

    def write(self, run_dir, out=None, **options):
        _RecordingReport.calls.append((run_dir, out, options))
        return pathlib.Path(run_dir) / "report" / "index.html"


class _CommandWithoutWrite:
    def configure(self, parser):
        pass

    def run(self, args):
        return 0


def _host_with(command_class):
    class Plugin:
        @staticmethod
        @hookimpl
        def cafe_register_commands(register):
            register("report", command_class)

    host = PluginHost(entry_points=False)
    host.add(Plugin, "reporter")
    return host


def test_report_calls_the_registered_report_command_with_the_host():
    host = _host_with(_RecordingReport)
    _RecordingReport.calls.clear()
    index = cafe_core.report("runs/x", max_targets=3, host=host)
    assert index == pathlib.Path("runs/x/report/index.html")
    assert _RecordingReport.calls == [("runs/x", None, {"max_targets": 3, "host": host})]


def test_without_a_report_plugin_the_error_says_what_to_install():
    with pytest.raises(ReportUnavailableError, match="cafe-plugin-report") as caught:
        cafe_core.report("runs/x", host=PluginHost(entry_points=False))
    assert isinstance(caught.value, CafeError)
    with pytest.raises(ReportUnavailableError, match="has no write"):
        cafe_core.report("runs/x", host=_host_with(_CommandWithoutWrite))


@pytest.mark.filterwarnings("ignore:cafe plugin:RuntimeWarning")
def test_the_installed_report_plugin_provides_the_commands():
    registry = PluginHost().registry("command")
    for name in ("report", "features", "analyze"):
        assert registry.get(name).plugin == "report"
    assert callable(registry.get("report").build().write)


def test_the_report_function_stays_a_function_after_first_use():
    code = ("import cafe_core; first = cafe_core.report; import cafe_core.reporting; "
            "print(callable(cafe_core.report) and cafe_core.report is first)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
