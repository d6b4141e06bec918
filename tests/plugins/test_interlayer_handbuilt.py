"""Interlayer relevance and insertion curves on a hand-built two-block model, against closed forms (numpy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cafe_core.protocols import RunContext
from cafe_interlayer.curves import InterlayerDeletion, InterlayerInsertion
from cafe_interlayer.methods import build_method
from cafe_interlayer.readout import LatentReadout
from cafe_interlayer.splice import Source, sae_path
from interlayer_handbuilt import N_TOKENS, expected_relevance, make_case, numpy_target

CONTEXT = RunContext(batch_size=4, dtype=torch.float64)
LATENTS, POSITIONS = [0, 3, 5], [2, 4, 1]


@pytest.fixture(scope="module")
def case():
    model, source_sae, target_sae, images = make_case()
    source = Source(model, source_sae, 0, "layer0")
    readout = LatentReadout.at_positions(target_sae, 1, LATENTS, POSITIONS, N_TOKENS)
    expected = [expected_relevance(model, source_sae, target_sae, images[i].numpy(), LATENTS[i], POSITIONS[i])
                for i in range(len(images))]
    return model, source, readout, images, expected


def test_the_splice_leaves_the_forward_value_unchanged_and_removes_its_hook(case):
    model, source, readout, images, expected = case
    with torch.no_grad():
        plain = model.forward_to(images, 1)
        with sae_path(source, requires_grad=False):
            spliced = model.forward_to(images, 1)
    torch.testing.assert_close(spliced, plain, rtol=1e-12, atol=1e-12)
    assert not model.model.blocks[0]._forward_hooks
    assert [e["value"] for e in expected] == pytest.approx(readout(plain).tolist(), rel=1e-10)


@pytest.mark.parametrize("name", ["gradient_x_input", "integrated_gradients"])
def test_relevance_over_source_latents_matches_the_closed_form(case, name):
    model, source, readout, images, expected = case
    attribution = build_method(name).attribute(source, readout, images, CONTEXT)
    for i, want in enumerate(expected):
        np.testing.assert_allclose(attribution.latents[i].numpy(), want["latents"], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(attribution.error[i].numpy(), want["error"], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(attribution.activations[i].numpy(), want["z"], rtol=1e-12, atol=1e-12)
        assert attribution.value[i].item() == pytest.approx(want["value"], rel=1e-12)
    assert attribution.covered == [1, 2, 3, 4] and attribution.uncovered_positions == [0]


def test_gradient_x_input_gives_every_other_node_its_closed_form_share_and_conserves(case):
    model, source, readout, images, expected = case
    attribution = build_method("gradient_x_input").attribute(source, readout, images, CONTEXT)
    for i, want in enumerate(expected):
        assert attribution.bias[i].item() == pytest.approx(want["bias"], rel=1e-9)
        assert attribution.uncovered[i, 0].item() == pytest.approx(want["uncovered"], rel=1e-9)
        assert attribution.absorbed[i].item() == pytest.approx(want["absorbed"], rel=1e-9)
    # A linear model: the nodes add up to the target exactly.
    assert attribution.info["conservation_error"].abs().max().item() < 1e-9


def test_integrated_gradients_credits_the_path_start_to_absorbed(case):
    model, source, readout, images, expected = case
    attribution = build_method("integrated_gradients", {"n_steps": 4}).attribute(source, readout, images, CONTEXT)
    for i, want in enumerate(expected):
        start = numpy_target(model, source.sae, readout.sae, np.tile(source.sae.b_h.numpy(), (4, 1)),
                             want["h0"][0], LATENTS[i], POSITIONS[i])
        assert attribution.absorbed[i].item() == pytest.approx(start, rel=1e-9)
        assert attribution.bias[i].item() == 0 and attribution.uncovered[i].abs().sum().item() == 0
    assert attribution.info["delta"].abs().max().item() < 1e-9


def test_sparse_tables_list_the_largest_pairs_and_latents(case):
    model, source, readout, images, expected = case
    attribution = build_method("gradient_x_input").attribute(source, readout, images, CONTEXT)
    want = expected[0]["latents"]
    pairs = attribution.top_pairs(0, count=3)
    flat = np.argsort(-np.abs(want).ravel(), kind="stable")[:3]
    assert [(p["position"], p["latent"]) for p in pairs] == [(1 + f // want.shape[1], f % want.shape[1]) for f in flat]
    latents = attribution.top_latents(0, count=2)
    per = want.sum(0)
    assert [r["latent"] for r in latents] == list(np.argsort(-np.abs(per), kind="stable")[:2])
    assert latents[0]["relevance"] == pytest.approx(per[latents[0]["latent"]], rel=1e-9)


def _numpy_curve(model, source, target, want, latent, position, inserting, points, error):
    """The normalised curve: units = active (token, latent) pairs, ranked by closed-form relevance."""
    z, e, h0 = want["z"], want["e"], want["h0"]
    relevance = np.where(z > 0, want["latents"], -np.inf).ravel()
    order = np.argsort(-relevance, kind="stable")
    n = int((z > 0).sum())
    values = []
    for f in np.linspace(0, 1, points):
        count = int(np.floor(f * n + 0.5))
        chosen = np.zeros(z.size, dtype=bool)
        chosen[order[:count]] = True
        present = chosen if inserting else ~chosen
        z_edit = (z.ravel() * present).reshape(z.shape)
        hat = z_edit @ source.W_d.numpy().T + source.b_h.numpy() + (e if error == "keep" else 0)
        values.append(numpy_target(model, source, target, hat, h0[0], latent, position))
    values = np.array(values)
    return values / (values[-1] if inserting else values[0])


@pytest.mark.parametrize("metric", [InterlayerInsertion, InterlayerDeletion])
@pytest.mark.parametrize("error", ["keep", "drop"])
def test_the_insertion_and_deletion_curves_match_the_hand_computed_ones(case, metric, error):
    model, source, readout, images, expected = case
    attribution = build_method("gradient_x_input").attribute(source, readout, images, CONTEXT)
    result = metric(points=6, error=error, clip=False).evaluate(source, readout, images, attribution, CONTEXT)
    fractions = np.linspace(0, 1, 6)
    for i, want in enumerate(expected):
        curve = _numpy_curve(model, source.sae, readout.sae, want, LATENTS[i], POSITIONS[i], metric.inserting, 6, error)
        np.testing.assert_allclose(result.raw_curve[i].numpy(), curve, rtol=1e-9)
        assert result.score[i].item() == pytest.approx(np.trapezoid(curve, fractions), rel=1e-9)
        assert result.info["units"][i].item() == int((want["z"] > 0).sum())
    if error == "keep":  # the full hidden state: the curve ends (starts) at the model's own value
        full = result.info["full_z"].numpy()
        np.testing.assert_allclose(full, [e["value"] for e in expected], rtol=1e-10)


def test_clipping_bounds_the_curve_and_the_area(case):
    model, source, readout, images, expected = case
    attribution = build_method("random").attribute(source, readout, images, CONTEXT)
    result = InterlayerInsertion(points=5).evaluate(source, readout, images, attribution, CONTEXT)
    assert result.curve.min() >= 0 and result.curve.max() <= 1
    torch.testing.assert_close(result.curve, result.raw_curve.clamp(0, 1))
    assert ((result.score >= 0) & (result.score <= 1)).all()


def test_latent_units_insert_a_latent_at_every_token_at_once(case):
    model, source, readout, images, expected = case
    attribution = build_method("gradient_x_input").attribute(source, readout, images, CONTEXT)
    result = InterlayerInsertion(points=3, unit="latent", clip=False).evaluate(
        source, readout, images, attribution, CONTEXT)
    for i, want in enumerate(expected):
        z = want["z"]
        assert result.info["units"][i].item() == int((z > 0).any(0).sum())
    # halfway through, a whole number of latents is present at all their tokens
    assert torch.isfinite(result.raw_curve).all()
