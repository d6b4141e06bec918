"""Interlayer attribution on cafe's default ViT: CP-LRP conserves through the SAE path, the model is left alone."""

from __future__ import annotations

import pytest
import torch

from cafe_core.plugins import PluginHost
from cafe_core.protocols import RunContext
from cafe_core.testing.model_state import snapshot
from cafe_interlayer.errors import InterlayerError
from cafe_interlayer.methods import METHODS, build_method
from cafe_interlayer.readout import LatentReadout
from cafe_interlayer.splice import Source, sae_path, splice_problem

CONTEXT = RunContext(batch_size=3, dtype=torch.float64)


@pytest.fixture(scope="module")
def toy():
    """The default ViT and its SAEs in float64, four shapes images, and each image's top layer-3 latent."""
    from cafe_shapes import ShapesDataset

    host = PluginHost()
    backbone = host.registry("backbone").get("toy_vit").build({})
    backbone.model.double()
    saes = {key: host.registry("sae").get("toy_sae").build({"layer": key[0], "tokens": key[1]}).double()
            for key in [(0, "patch"), (2, "patch"), (3, "patch"), (3, "cls")]}
    dataset = ShapesDataset(4, seed=4)
    x = backbone.preprocess([dataset[i].image for i in range(4)]).double()
    with torch.no_grad():
        codes = saes[(3, "patch")].encode(backbone.forward_to(x, 3)[:, 1:])
    best = codes.flatten(1).argmax(1)
    positions = (best // codes.shape[-1] + 1).tolist()
    latents = (best % codes.shape[-1]).tolist()
    return backbone, saes, x, latents, positions


def _readout(toy, tokens="patch"):
    backbone, saes, x, latents, positions = toy
    if tokens == "cls":
        with torch.no_grad():
            codes = saes[(3, "cls")].encode(backbone.forward_to(x, 3)[:, 0])
        return LatentReadout.at_positions(saes[(3, "cls")], 3, codes.argmax(1).tolist(), [0] * len(x), 65)
    return LatentReadout.at_positions(saes[(3, "patch")], 3, latents, positions, 65)


@pytest.mark.parametrize("source_layer, tokens", [(2, "patch"), (0, "patch"), (0, "cls")])
def test_cp_lrp_conserves_across_source_latents_error_node_and_biases(toy, source_layer, tokens):
    backbone, saes, x, _, _ = toy
    source = Source(backbone, saes[(source_layer, "patch")], source_layer)
    readout = _readout(toy, tokens)
    attribution = build_method("cp_lrp").attribute(source, readout, x, CONTEXT)
    total = (attribution.latents.flatten(1).sum(1) + attribution.error.sum(1) + attribution.bias
             + attribution.uncovered.sum(1) + attribution.absorbed)
    assert (attribution.value > 0).all()
    torch.testing.assert_close(total, attribution.value, rtol=1e-10, atol=1e-10)
    # the error node is reported, not hidden: it holds relevance of its own
    assert attribution.error.abs().sum(1).min() > 0


def test_attnlrp_does_not_conserve_exactly_but_stays_close(toy):
    backbone, saes, x, _, _ = toy
    attribution = build_method("attnlrp").attribute(Source(backbone, saes[(2, "patch")], 2), _readout(toy), x, CONTEXT)
    relative = attribution.info["conservation_error"].abs() / attribution.value.abs()
    assert relative.max() < 0.5


@pytest.mark.parametrize("name", sorted(METHODS))
def test_methods_leave_the_model_as_they_found_it_and_rows_do_not_depend_on_the_batch(toy, name):
    backbone, saes, x, _, _ = toy
    source = Source(backbone, saes[(2, "patch")], 2)
    readout = _readout(toy)
    method = build_method(name, {"n_steps": 4} if name == "integrated_gradients" else None)
    before = snapshot(backbone.model)
    together = method.attribute(source, readout, x, CONTEXT)
    assert not before.differences(snapshot(backbone.model))
    if name == "random":
        return
    alone = method.attribute(source, readout.select([2]), x[2:3], CONTEXT)
    torch.testing.assert_close(alone.latents[0], together.latents[2], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(alone.error[0], together.error[2], rtol=1e-9, atol=1e-12)


def test_a_source_after_the_target_and_a_non_vit_are_refused(toy):
    backbone, saes, x, _, _ = toy
    with pytest.raises(ValueError, match="must come after"):
        build_method("gradient_x_input").attribute(Source(backbone, saes[(3, "patch")], 3), _readout(toy), x, CONTEXT)

    class Flat:
        model = torch.nn.Linear(2, 2)

    assert "blocks" in splice_problem(Flat(), saes[(0, "patch")], 0)
    with pytest.raises(InterlayerError, match="blocks"):
        with sae_path(Source(Flat(), saes[(0, "patch")], 0)):
            pass


def test_a_trailing_norm_at_the_source_layer_is_refused(toy):
    backbone, saes, _, _, _ = toy

    class Normed:
        model = backbone.model

        def trailing_modules(self, layer):
            return ("norm",)

    assert "norm" in splice_problem(Normed(), saes[(2, "patch")], 2)


def test_unknown_methods_and_bad_params_are_named():
    with pytest.raises(InterlayerError, match="available"):
        build_method("integrated_gradient")
    with pytest.raises(InterlayerError, match="n_steps"):
        build_method("integrated_gradients", {"n_steps": 0})
