"""What a built component cannot do on the run's backbone is reported before any image is processed."""

from types import SimpleNamespace

import pytest
from pydantic import BaseModel

import cafe_core
from cafe_core import hookimpl
from cafe_core.errors import SpecError
from cafe_core.plan import prepare
from cafe_core.plugins import PluginHost
from cafe_core.spec import load_spec

pytestmark = pytest.mark.slow


class NeedsRegisters:
    """A metric that scores register tokens only, so it refuses a backbone without them."""

    higher_is_better = True
    evaluated = 0

    def check_compatible(self, backbone, saes):
        if not any(name.startswith("reg") for name in backbone.prefix_tokens):
            return [f"needs register tokens, but this backbone has only {list(backbone.prefix_tokens)}; "
                    "use a model with registers"]
        return []

    def evaluate(self, target, x, heatmap, context, annotations=None):  # pragma: no cover - never reached
        NeedsRegisters.evaluated += 1
        raise AssertionError("a run with an incompatible metric must not start")


def host_with(**hooks):
    host = PluginHost()
    host.add(SimpleNamespace(**hooks), "test-components")
    return host


def test_an_incompatible_metric_is_a_spec_problem_at_its_path(spec_dict, tmp_path):
    @hookimpl
    def cafe_register_metrics(register):
        register("register_score", NeedsRegisters)

    spec_dict["metrics"] = [{"name": "insertion", "steps": 2}, {"name": "register_score"}]
    host = host_with(cafe_register_metrics=cafe_register_metrics)
    spec, base_dir = load_spec(spec_dict)
    with pytest.raises(SpecError) as info:
        prepare(spec, host, base_dir)
    assert info.value.problems == [
        ("metrics[1]", "needs register tokens, but this backbone has only ['cls']; use a model with registers")
    ]
    with pytest.raises(SpecError):
        cafe_core.run(spec_dict, tmp_path / "run", host=host)
    assert NeedsRegisters.evaluated == 0 and not (tmp_path / "run").exists()


def test_an_sae_of_a_site_the_backbone_does_not_provide_is_refused(spec_dict):
    from cafe_sae.loading import load_relu

    def load_mlp_out_sae(path, layer=None):
        sae = load_relu(path, layer=layer)
        sae.site = "mlp_out"  # as a checkpoint trained on the MLP output of the block records it
        return sae

    class Params(BaseModel):
        path: str
        layer: int

    @hookimpl
    def cafe_register_saes(register):
        register("mlp_out_sae", load_mlp_out_sae, params=Params)

    spec_dict["sae"] = {"name": "mlp_out_sae", "path": spec_dict["sae"]["path"], "layer": 1}
    spec, base_dir = load_spec(spec_dict)
    with pytest.raises(SpecError) as info:
        prepare(spec, host_with(cafe_register_saes=cafe_register_saes), base_dir)
    ((path, message),) = info.value.problems
    assert path == "sae.site"
    assert "'mlp_out'" in message and "'resid_post'" in message
