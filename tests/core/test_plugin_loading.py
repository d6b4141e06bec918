"""Discovery through real entry points, and isolation of broken plugins."""

import sys
import textwrap

import pytest

from cafe_core.errors import PluginLoadError, UnknownComponentError
from cafe_core.plugins import PluginHost


def make_distribution(tmp_path, dist_name, module_name, source, entry_name=None):
    """Write an installed-looking distribution (a dist-info folder and a module) under ``tmp_path``."""
    entry_name = entry_name or module_name
    (tmp_path / f"{module_name}.py").write_text(textwrap.dedent(source))
    info = tmp_path / f"{dist_name.replace('-', '_')}-0.3.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 0.3.0\n")
    (info / "entry_points.txt").write_text(f"[cafe]\n{entry_name} = {module_name}\n")
    return tmp_path


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("CAFE_STRICT_PLUGINS", raising=False)
    monkeypatch.delenv("CAFE_DISABLE_PLUGINS", raising=False)
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("cafe_test_")]:
        del sys.modules[name]


GOOD = """
    from pydantic import BaseModel
    from cafe_core import hookimpl

    class Params(BaseModel):
        scale: float = 1.0

    class Doubler:
        needs_grad = False
        conserves_relevance = False
        def __init__(self, scale=1.0):
            self.scale = scale

    @hookimpl
    def cafe_register_attributors(register):
        register("doubler", Doubler, params=Params, description="test method")
"""


def test_installed_plugins_are_discovered_with_their_distribution_and_version():
    host = PluginHost()
    baselines = host.plugins["baselines"]
    assert baselines.distribution == "cafe-plugin-baselines"
    assert baselines.version
    assert ("attributor", "gradient_x_input") in baselines.components or host.registry("attributor")
    assert host.registry("attributor").get("gradient_x_input").plugin == "baselines"
    assert ("attributor", "gradient_x_input") in host.plugins["baselines"].components


def test_a_new_distribution_is_discovered_through_its_entry_point(site):
    make_distribution(site, "cafe-plugin-doubler", "cafe_test_good", GOOD)
    host = PluginHost()
    registration = host.registry("attributor").get("doubler")
    assert registration.plugin == "cafe_test_good"
    assert host.plugins["cafe_test_good"].version == "0.3.0"
    assert registration.build({"scale": 2}).scale == 2.0


def test_plugin_that_raises_on_import_is_isolated_and_reported(site):
    make_distribution(site, "cafe-plugin-good", "cafe_test_good", GOOD)
    make_distribution(site, "cafe-plugin-broken", "cafe_test_broken", "raise ImportError('needs lxt')\n")
    with pytest.warns(RuntimeWarning, match="cafe_test_broken.*needs lxt"):
        host = PluginHost()
    assert host.registry("attributor").get("doubler")
    (failure,) = [f for f in host.failures if f.name == "cafe_test_broken"]
    assert failure.stage == "import" and failure.distribution == "cafe-plugin-broken"
    assert "Traceback" in failure.traceback and "needs lxt" in failure.traceback
    with pytest.raises(UnknownComponentError, match="cafe_test_broken \\(import failed: ImportError: needs lxt\\)"):
        host.registry("attributor").get("lrp_from_missing_library")
    assert host.describe()["failures"][0]["name"] == "cafe_test_broken"


def test_strict_mode_makes_a_broken_plugin_fatal(site, monkeypatch):
    make_distribution(site, "cafe-plugin-broken", "cafe_test_broken", "raise ImportError('needs lxt')\n")
    monkeypatch.setenv("CAFE_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match="needs lxt"):
        PluginHost()


def test_disabled_plugins_are_not_loaded(site, monkeypatch):
    make_distribution(site, "cafe-plugin-broken", "cafe_test_broken", "raise ImportError('needs lxt')\n")
    monkeypatch.setenv("CAFE_DISABLE_PLUGINS", "cafe_test_broken, baselines")
    host = PluginHost()
    assert not host.failures
    assert "gradient_x_input" not in host.registry("attributor")
    assert host.describe()["disabled"] == ["baselines", "cafe_test_broken"]


def test_misspelled_hook_is_reported_with_the_right_name(site):
    source = """
        from cafe_core import hookimpl

        @hookimpl
        def cafe_register_atributors(register):
            pass
    """
    make_distribution(site, "cafe-plugin-typo", "cafe_test_typo", source)
    with pytest.warns(RuntimeWarning, match="cafe_register_atributors"):
        host = PluginHost()
    (failure,) = [f for f in host.failures if f.name == "cafe_test_typo"]
    assert "did you mean 'cafe_register_attributors'?" in failure.error
    assert "cafe_test_typo" not in host.plugins


def test_plugin_that_raises_while_registering_keeps_nothing_and_others_survive(site):
    source = """
        from cafe_core import hookimpl

        @hookimpl
        def cafe_register_attributors(register):
            register("half_registered", object)
            raise RuntimeError("boom")
    """
    make_distribution(site, "cafe-plugin-boom", "cafe_test_boom", source)
    with pytest.warns(RuntimeWarning, match="boom"):
        host = PluginHost()
        host.registry("attributor")
    assert "half_registered" not in host.registry("attributor")
    assert "gradient_x_input" in host.registry("attributor")


def test_two_plugins_registering_one_name_report_both(site):
    make_distribution(site, "cafe-plugin-one", "cafe_test_one", GOOD)
    make_distribution(site, "cafe-plugin-two", "cafe_test_two", GOOD)
    host = PluginHost()
    assert host.describe()["conflicts"] == {"attributor": {"doubler": ["cafe_test_one", "cafe_test_two"]}}


def test_no_plugin_manager_is_built_at_import_time():
    import subprocess

    code = "import cafe_core, cafe_core.plugins as p, sys; print(p._host is None, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False"]


def test_hand_added_plugin_object():
    from types import SimpleNamespace

    from cafe_core import hookimpl

    @hookimpl
    def cafe_register_metrics(register):
        register("always_one", object, description="x")

    host = PluginHost(entry_points=False)
    host.add(SimpleNamespace(cafe_register_metrics=cafe_register_metrics), "inline")
    assert host.registry("metric").get("always_one").plugin == "inline"


def test_loading_every_installed_plugin_imports_no_torch():
    """`cafe plugins`, `cafe validate --no-build` and spec checks stay fast: registration is lazy."""
    import subprocess

    code = (
        "import sys; from cafe_core.plugins import PluginHost; from cafe_core.registry import KINDS; "
        "host = PluginHost(); [host.registry(kind) for kind in KINDS]; "
        "heavy = ('torch', 'timm', 'captum', 'lxt', 'zennit', 'ray'); "
        "print(len(host.plugins), sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(" ", 1)
    assert int(out[0]) >= 5
    assert out[1].strip() == "[]"
