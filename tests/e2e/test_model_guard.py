"""A component that changes the model is caught by the run: once per component by default, every call when paranoid."""

from types import SimpleNamespace

import pytest
import torch

import cafe_core
from cafe_core.model_guard import ModelChangedError, ModelFingerprint
from cafe_core.plugins import PluginHost

pytestmark = pytest.mark.slow


def mutating_plugin(mutation, on_call=1):
    """A plugin whose attributor ``mutating`` is gradient x input that changes the model on call ``on_call``."""
    from cafe_baselines.gradient_x_input import GradientXInput

    from cafe_core import hookimpl

    calls = []

    class Mutating(GradientXInput):
        def attribute(self, target, x, context):
            calls.append(1)
            result = super().attribute(target, x, context)
            if len(calls) == on_call:
                mutation(target.backbone.model, target.sae)
            return result

    @hookimpl
    def cafe_register_attributors(register):
        register("mutating", Mutating)

    return SimpleNamespace(cafe_register_attributors=cafe_register_attributors)


def host_with(mutation, on_call=1):
    host = PluginHost()
    host.add(mutating_plugin(mutation, on_call), "mutating")
    return host


def scale_a_weight(model, sae):
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight.mul_(1.01)


def change_a_weight_through_data(model, sae):
    model.blocks[0].mlp.fc1.weight.data[0, 0] += 1.0


def leave_a_hook(model, sae):
    model.blocks[1].register_forward_hook(lambda module, inputs, output: output)


def patch_forward(model, sae):
    block = model.blocks[0]
    block.forward = block.forward


def toggle_requires_grad_of_the_sae(model, sae):
    for parameter in sae.parameters():
        parameter.requires_grad_(not parameter.requires_grad)


def switch_to_training(model, sae):
    model.train()


MUTATIONS = {
    "weight scaled in place": (scale_a_weight, "parameter backbone.blocks.0.attn.qkv.weight"),
    "weight changed through .data": (change_a_weight_through_data, "parameter backbone.blocks.0.mlp.fc1.weight"),
    "hook left behind": (leave_a_hook, "module backbone.blocks.1: forward hooks: 0 -> 1"),
    "forward patched": (patch_forward, "module backbone.blocks.0: methods set on the instance: () -> ('forward',)"),
    "requires_grad flipped": (toggle_requires_grad_of_the_sae, "parameter SAE 'relu'.W_d: requires_grad: False -> True"),
    "training mode left on": (switch_to_training, "training: False -> True"),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_a_component_that_changes_the_model_stops_the_run_naming_it(spec_dict, tmp_path, mutation):
    mutate, expected = MUTATIONS[mutation]
    spec_dict["attributors"] = [{"name": "activation_map"}, {"name": "mutating"}]
    with pytest.raises(ModelChangedError) as caught:
        cafe_core.run(spec_dict, tmp_path / "run", host=host_with(mutate))
    message = str(caught.value)
    assert message.startswith("attributor 'mutating' changed the model it was given")
    assert expected in message
    assert "leave it out of the spec" in message and len(message.splitlines()) == 1


def test_a_later_change_is_caught_only_when_paranoid(spec_dict, tmp_path):
    spec_dict["attributors"] = [{"name": "mutating"}]
    # The first call is checked and clean; the change on the second call goes unseen by default ...
    unchecked = cafe_core.run(spec_dict, tmp_path / "default", host=host_with(scale_a_weight, on_call=2))
    assert len(unchecked.rows) == 5 * 2 * 2
    # ... and is caught with --paranoid; the first chunk of targets (2 targets x 2 metrics) stays committed.
    with pytest.raises(ModelChangedError, match="attributor 'mutating' changed the model"):
        cafe_core.run(spec_dict, tmp_path / "paranoid", host=host_with(scale_a_weight, on_call=2), paranoid=True)
    assert len(cafe_core.Results.load(tmp_path / "paranoid").rows) == 2 * 2


def test_every_shipped_component_leaves_the_model_alone_under_paranoid(spec_dict, tmp_path):
    spec_dict["attributors"] = [
        {"name": "activation_map"}, {"name": "gradient_x_input"}, {"name": "attnlrp"}, {"name": "cp_lrp"},
        {"name": "integrated_gradients", "n_steps": 4}, {"name": "occlusion"}, {"name": "saliency"},
    ]
    spec_dict["run"]["limit"] = 2
    results = cafe_core.run(spec_dict, tmp_path / "run", paranoid=True)
    assert len(results.rows) == 2 * 2 * 7 * 2


def test_the_fingerprint_sees_a_one_ulp_change_and_nothing_when_unchanged():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    before = ModelFingerprint.of([("m", model)])
    assert before.differences(ModelFingerprint.of([("m", model)])) == []
    weight = model[0].weight.data
    weight[1, 2] = torch.nextafter(weight[1, 2], torch.tensor(float("inf")))
    changes = before.differences(ModelFingerprint.of([("m", model)]))
    assert changes == [changes[0]] and changes[0].startswith("parameter m.0.weight: values (CRC-32 of the bytes)")
