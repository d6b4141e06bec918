"""The executor a spec names: the in-process default, shorthand and table forms, errors for unknown names."""

import pickle
import subprocess
import sys

import pytest

from cafe_core.errors import SpecError
from cafe_core.executors import ExecutionReport, InProcessExecutor, UnitFailedError
from cafe_core.plugins import PluginHost
from cafe_core.resolve import resolve
from cafe_core.spec import load_spec

SPEC = {
    "backbone": {"name": "toy_vit"},
    "sae": {"name": "toy_sae", "layer": 3},
    "dataset": {"name": "shapes", "size": 2, "seed": 4},
    "targets": {"select": "top", "count": 1},
    "attributors": [{"name": "activation_map"}],
    "run": {"batch_size": 2, "device": "cpu"},
}


def with_executor(executor):
    return {**SPEC, "run": {**SPEC["run"], "executor": executor}}


def test_the_in_process_executor_is_the_default_and_registered_by_the_core_on_every_host():
    spec, _ = load_spec(SPEC)
    assert spec.run.executor.name == "inprocess"
    registration = PluginHost(entry_points=False).registry("executor").get("inprocess")
    assert registration.plugin == "core"
    assert isinstance(registration.build(), InProcessExecutor)


def test_an_executor_is_named_by_a_string_or_a_table_with_its_params():
    short, _ = load_spec(with_executor("ray"))
    table, _ = load_spec(with_executor({"name": "ray", "num_workers": 2, "address": "auto"}))
    assert short.run.executor.name == table.run.executor.name == "ray"
    assert table.run.executor.params == {"num_workers": 2, "address": "auto"}
    resolved = resolve(table, PluginHost())["executor"][0]
    assert (resolved.params.num_workers, resolved.params.address) == (2, "auto")


def test_an_unknown_executor_is_named_with_the_close_match_and_what_is_available():
    spec, _ = load_spec(with_executor("rayy"))
    with pytest.raises(SpecError) as caught:
        resolve(spec, PluginHost())
    [(path, message)] = caught.value.problems
    assert path == "run.executor.name"
    assert message.startswith("unknown executor 'rayy'. Did you mean 'ray'? Available: inprocess, ray.")


def test_an_executor_params_problem_has_its_path_in_the_spec():
    spec, _ = load_spec(with_executor({"name": "ray", "num_workers": 0, "adress": "auto"}))
    with pytest.raises(SpecError) as caught:
        resolve(spec, PluginHost())
    assert {path for path, _ in caught.value.problems} == {"run.executor.num_workers", "run.executor.adress"}


def test_a_run_on_the_default_executor_imports_no_ray():
    code = (
        "import json, sys, cafe_core; "
        f"results = cafe_core.run(json.loads({__import__('json').dumps(SPEC)!r}), progress=False); "
        "print(results.execution.summary(), '|', 'ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    summary, ray_imported = out.strip().rsplit(" | ", 1)
    assert summary == "1 unit done on 1 worker, 0 retried, 0 failed"
    assert ray_imported == "False"


def test_the_report_of_a_resumed_run_says_what_was_finished_before():
    report = ExecutionReport(done=1, retried=2, failed=0, workers=2, finished_before=3)
    assert report.summary() == "1 unit done on 2 workers (3 finished before), 2 retried, 0 failed"


def test_the_errors_a_worker_or_an_executor_raises_survive_pickling():
    """A worker elsewhere raises to the driver through pickling (a spec problem on its machine, say)."""
    spec_error = pickle.loads(pickle.dumps(SpecError([("sae.path", "does not exist")], what="run spec")))
    assert spec_error.problems == [("sae.path", "does not exist")]
    assert str(spec_error) == "1 problem(s) in the run spec:\n  sae.path: does not exist"
    report = ExecutionReport(done=2, retried=3, failed=1, workers=2)
    failed = pickle.loads(pickle.dumps(UnitFailedError("unit u failed", ["u"], report)))
    assert (str(failed), failed.units, failed.report) == ("unit u failed", ["u"], report)
