"""Runs on a local Ray cluster of two workers: the same rows as in-process, dead workers, a killed driver.

The cluster is started once for the module. A test plugin, installed into a folder that the cluster's
workers import from, provides `crashing_gradient_x_input`: gradient x input whose call can kill its own
process a set number of times (counted across all workers with marker files) or sleep first.
"""

import collections
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
import ray

import cafe_core
from cafe_core.component_errors import ComponentError
from cafe_core.executors import UnitFailedError
from cafe_core.plugins import PluginHost
from cafe_core.run_lock import RunInUseError
from cafe_ray.executor import RayExecutor
from same_results import assert_same_results

pytestmark = pytest.mark.slow

CRASHING_PLUGIN = """
    import os
    import signal
    import time

    from pydantic import BaseModel

    from cafe_baselines.gradient_x_input import GradientXInput
    from cafe_core import hookimpl


    class Params(BaseModel):
        deaths: int = 0           # calls, across all workers, that kill their own process
        marker: str | None = None  # prefix of the files counting those deaths
        sleep: float = 0.0
        fail: bool = False        # raise instead


    class CrashingGradientXInput(GradientXInput):
        def __init__(self, deaths=0, marker=None, sleep=0.0, fail=False):
            super().__init__()
            self.deaths, self.marker, self.sleep, self.fail = deaths, marker, sleep, fail

        def attribute(self, target, x, context):
            if self.fail:
                raise ValueError("broken on purpose")
            for death in range(self.deaths):
                try:
                    handle = os.open(f"{self.marker}.{death}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    continue
                os.write(handle, str(os.getpid()).encode())
                os.close(handle)
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(self.sleep)
            return super().attribute(target, x, context)


    @hookimpl
    def cafe_register_attributors(register):
        register("crashing_gradient_x_input", CrashingGradientXInput, params=Params)
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster of 2 CPUs whose workers import the test plugin; its address."""
    site = tmp_path_factory.mktemp("site")
    (site / "cafe_test_crashing.py").write_text(textwrap.dedent(CRASHING_PLUGIN))
    info = site / "cafe_test_crashing-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cafe-test-crashing\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[cafe]\ncrashing = cafe_test_crashing\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
        patch.syspath_prepend(str(site))
        context = ray.init(num_cpus=2, include_dashboard=False)
        try:
            yield context.address_info["gcs_address"]
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def host(cluster):
    return PluginHost()


def crashing(spec_dict, **params):
    spec_dict["attributors"] = [{"name": "activation_map"}, {"name": "crashing_gradient_x_input", **params}]
    return spec_dict


def finished_units(directory):
    """Each finished unit with the time it was committed."""
    try:
        with sqlite3.connect(directory / "run.db") as connection:
            return dict(connection.execute("SELECT unit, finished FROM units").fetchall())
    except sqlite3.OperationalError:  # the run has not created its tables yet
        return {}


def test_two_workers_give_the_in_process_rows(cluster, host, spec_dict, tmp_path):
    reference = cafe_core.run(spec_dict, tmp_path / "local", host=host)
    spec_dict["run"]["executor"] = {"name": "ray", "num_workers": 2}
    results = cafe_core.run(spec_dict, tmp_path / "ray", host=host)
    assert_same_results(results, reference)
    assert results.execution.summary() == "3 units done on 2 workers, 0 retried, 0 failed"


def test_a_worker_killed_mid_unit_is_replaced_and_its_unit_retried(cluster, host, spec_dict, tmp_path):
    reference = cafe_core.run(crashing(spec_dict), tmp_path / "local", host=host)
    marker = tmp_path / "death"
    executor = RayExecutor(num_workers=2, max_retries=2)
    results = cafe_core.run(crashing(spec_dict, deaths=1, marker=str(marker)), tmp_path / "ray", host=host,
                            executor=executor)
    killed = int((tmp_path / "death.0").read_text())
    assert killed not in {t.pid for t in executor.timings}  # that process finished no unit: it died in its first
    assert results.execution.retried == 1 and results.execution.done == 3 and results.execution.failed == 0
    assert_same_results(results, reference)  # every row once: none lost, none twice
    assert len(finished_units(tmp_path / "ray")) == 3


def test_a_unit_whose_worker_dies_too_often_fails_naming_it_and_the_same_run_resumes(cluster, host, spec_dict,
                                                                                       tmp_path):
    reference = cafe_core.run(crashing(spec_dict), tmp_path / "local", host=host)
    spec = crashing(spec_dict, deaths=2, marker=str(tmp_path / "death"))
    directory = tmp_path / "ray"
    with pytest.raises(UnitFailedError) as caught:
        cafe_core.run(spec, directory, host=host, executor=RayExecutor(num_workers=1, max_retries=1))
    [unit] = caught.value.units
    assert unit.startswith("images[0:2]#")
    message = str(caught.value)
    assert message.startswith(f"unit {unit} failed: the Ray worker computing it died 2 times (max_retries = 1)")
    assert (caught.value.report.retried, caught.value.report.failed) == (1, 1)
    with sqlite3.connect(directory / "run.db") as connection:
        assert connection.execute("SELECT COUNT(*) FROM units").fetchone()[0] == 0
        assert connection.execute("SELECT COUNT(*) FROM targets").fetchone()[0] > 0  # what was committed stays

    executor = RayExecutor(num_workers=1, max_retries=1)
    results = cafe_core.run(spec, directory, host=host, executor=executor)
    assert results.execution.summary() == "3 units done on 1 worker, 0 retried, 0 failed"
    assert_same_results(results, reference)
    assert sorted(t.unit for t in executor.timings) == sorted(finished_units(directory))
    [(_, units)] = collections.Counter(t.pid for t in executor.timings).items()
    assert units == 3 and [t.plan_seconds > 0 for t in executor.timings] == [True, False, False]  # one model load


def test_a_component_that_raises_on_a_worker_stops_the_run_with_its_own_error(cluster, host, spec_dict, tmp_path):
    executor = RayExecutor(num_workers=2, max_retries=2)
    with pytest.raises(ComponentError) as caught:
        cafe_core.run(crashing(spec_dict, fail=True), tmp_path / "ray", host=host, executor=executor)
    assert str(caught.value).startswith("attributor 'crashing_gradient_x_input' failed while explaining 2 targets")
    assert "ValueError: broken on purpose; results committed before it are kept" in str(caught.value)
    assert executor.timings == []  # the run stopped at the error: no unit finished


def test_a_killed_driver_resumes_without_computing_its_finished_units_again(cluster, host, spec_dict, tmp_path):
    reference = cafe_core.run(crashing(spec_dict), tmp_path / "local", host=host)
    spec = crashing(spec_dict, sleep=1.0)
    spec["run"]["executor"] = {"name": "ray", "address": cluster, "num_workers": 2}
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    out = tmp_path / "ray"
    script = "import json, sys, cafe_core; cafe_core.run(json.load(open(sys.argv[1])), sys.argv[2], progress=False)"
    driver = subprocess.Popen([sys.executable, "-c", script, str(spec_path), str(out)])
    try:
        deadline = time.time() + 300
        while time.time() < deadline and driver.poll() is None:
            if (out / "run.db").exists() and finished_units(out):
                break
            time.sleep(0.05)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    at_kill = finished_units(out)
    assert 1 <= len(at_kill) < 3, "the kill should land mid-run"

    results = cafe_core.run(spec, out, host=host)  # this process is connected to the same cluster
    assert results.execution.finished_before == len(at_kill)
    assert results.execution.done == 3 - len(at_kill)
    after = finished_units(out)
    assert {unit: after[unit] for unit in at_kill} == at_kill  # finished units were not computed again
    assert_same_results(results, reference)


def test_a_second_driver_into_a_directory_in_use_is_refused_before_any_worker_starts(cluster, host, spec_dict,
                                                                                      tmp_path):
    directory = tmp_path / "run"
    directory.mkdir()
    hold = (
        "import sys; from cafe_core.run_lock import RunLock\n"
        "with RunLock(sys.argv[1]):\n    print('held', flush=True); sys.stdin.read()"
    )
    other = subprocess.Popen([sys.executable, "-c", hold, str(directory)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        executor = RayExecutor(num_workers=2)
        with pytest.raises(RunInUseError):
            cafe_core.run(spec_dict, directory, host=host, executor=executor)
        assert executor.timings == [] and not (directory / "run.db").exists()
    finally:
        other.communicate("")
