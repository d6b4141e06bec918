"""cafe-plugin-ray's registration: found through its entry point, its params, nothing started for no work."""

import pathlib
import re
import subprocess
import sys

import pydantic
import pytest

from cafe_core.executors import ExecutionReport
from cafe_core.plugins import PluginHost
from cafe_core.resolve import resolve_component
from cafe_core.spec import RunSection

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_the_ray_executor_is_discovered_through_its_entry_point_with_its_defaults():
    registration = PluginHost().registry("executor").get("ray")
    assert registration.plugin == "ray"
    executor = registration.build({})
    assert (executor.address, executor.num_workers, executor.num_cpus, executor.num_gpus, executor.max_retries) == (
        None, None, 1.0, 0.0, 2
    )
    executor = registration.build({"address": "auto", "num_workers": 8, "num_gpus": 1, "max_retries": 0})
    assert (executor.address, executor.num_workers, executor.num_gpus, executor.max_retries) == ("auto", 8, 1.0, 0)


@pytest.mark.parametrize("params", [{"num_workers": 0}, {"num_cpus": 0}, {"num_gpus": -1}, {"max_retries": -1},
                                    {"workers": 2}])
def test_out_of_range_or_unknown_params_are_refused(params):
    with pytest.raises(pydantic.ValidationError):
        PluginHost().registry("executor").get("ray").validate(params)


def test_registering_the_plugin_imports_no_ray_and_no_work_starts_no_cluster():
    code = (
        "import sys; from cafe_core.plugins import PluginHost; "
        "registry = PluginHost().registry('executor'); loaded = 'ray' in sys.modules; "
        "report = registry.get('ray').build({}).execute([], None, None); import ray; "
        "print(loaded, report.summary(), ray.is_initialized())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"False {ExecutionReport(workers=0).summary()} False"


@pytest.mark.parametrize("readme", ["README.md", "plugins/cafe-plugin-ray/README.md"])
def test_the_documented_ray_sections_are_valid(readme):
    text = (ROOT / readme).read_text()
    [block] = [b for b in re.findall(r"```toml\n(.*?)```", text, flags=re.S) if "[run.executor]" in b]
    section = RunSection.model_validate(tomllib.loads(block)["run"])
    component, problems = resolve_component("run.executor", "executor", section.executor, PluginHost(), ROOT)
    assert problems == [] and component.registration.name == "ray"
