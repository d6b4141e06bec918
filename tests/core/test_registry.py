"""Name resolution: did-you-mean, conflicts, lazy factories, params validation."""

import pytest
from pydantic import BaseModel, ValidationError

from cafe_core.errors import ComponentLoadError, DuplicateComponentError, UnknownComponentError
from cafe_core.registry import Registry


class StepsParams(BaseModel):
    n_steps: int = 8


class Method:
    def __init__(self, n_steps: int = 8):
        self.n_steps = n_steps


def test_unknown_name_suggests_close_matches_and_lists_available():
    registry = Registry("attributor")
    registry.add("integrated_gradients", Method, plugin="captum", params=StepsParams)
    registry.add("gradient_x_input", Method, plugin="baselines")
    with pytest.raises(UnknownComponentError) as info:
        registry.get("integrated_gradient")
    message = str(info.value)
    assert "Did you mean 'integrated_gradients'?" in message
    assert "Available: gradient_x_input, integrated_gradients." in message


def test_unknown_name_mentions_plugin_load_failures():
    class Failure:
        name = "attnlrp"
        summary = "import failed: ModuleNotFoundError: No module named 'lxt'"

    registry = Registry("attributor", failures=lambda: [Failure()])
    with pytest.raises(UnknownComponentError, match="attnlrp \\(import failed: ModuleNotFoundError"):
        registry.get("attnlrp")


def test_same_name_from_two_plugins_is_an_error_naming_both():
    registry = Registry("metric")
    registry.add("insertion", Method, plugin="faithfulness")
    registry.add("insertion", Method, plugin="my-metrics")
    with pytest.raises(DuplicateComponentError, match="'faithfulness' and 'my-metrics'"):
        registry.get("insertion")
    assert registry.conflicts == {"insertion": ["faithfulness", "my-metrics"]}


def test_alias_clash_is_a_conflict_too():
    registry = Registry("metric")
    registry.add("insertion", Method, plugin="a", aliases=("ins",))
    registry.add("ins", Method, plugin="b")
    with pytest.raises(DuplicateComponentError):
        registry.get("ins")


def test_alias_resolves_to_the_component():
    registry = Registry("attributor")
    registry.add("integrated_gradients", Method, plugin="captum", aliases=("ig",), params=StepsParams)
    assert registry.get("ig").name == "integrated_gradients"
    assert "ig" in registry and registry.names() == ["integrated_gradients"]


def test_params_are_validated_and_unknown_keys_rejected_even_if_the_plugin_allows_them():
    registry = Registry("attributor")
    reg = registry.add("ig", Method, plugin="captum", params=StepsParams)
    assert reg.build({"n_steps": 3}).n_steps == 3
    with pytest.raises(ValidationError, match="n_steps"):
        reg.validate({"n_steps": "many"})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        reg.validate({"n_step": 3})


def test_component_without_params_rejects_any_param():
    registry = Registry("attributor")
    reg = registry.add("activation_map", Method, plugin="baselines")
    with pytest.raises(ValidationError):
        reg.validate({"anything": 1})


def test_lazy_factory_imports_only_when_built():
    registry = Registry("attributor")
    reg = registry.add("lazy", "no_such_module_xyz:Thing", plugin="p")  # registering imports nothing
    assert reg.factory == "no_such_module_xyz:Thing"
    assert registry.add("ordered", "collections:OrderedDict", plugin="p").load().__name__ == "OrderedDict"


def test_lazy_factory_that_cannot_import_names_the_component_and_fix():
    registry = Registry("attributor")
    reg = registry.add("ghost", "no_such_module_xyz:Thing", plugin="ghost-plugin")
    with pytest.raises(ComponentLoadError, match="attributor 'ghost' of plugin 'ghost-plugin'.*reinstall"):
        reg.build({})


def test_factory_errors_are_wrapped_with_the_component_name():
    def broken(**_):
        raise RuntimeError("weights missing")

    reg = Registry("backbone").add("bad", broken, plugin="p")
    with pytest.raises(ComponentLoadError, match="could not build backbone 'bad'.*weights missing"):
        reg.build({})


def test_unknown_kind_rejected():
    with pytest.raises(ValueError, match="unknown component kind"):
        Registry("widget")
