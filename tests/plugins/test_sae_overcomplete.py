"""overcomplete SAEs saved as bare state dicts load by path and give overcomplete's latents: ``SAE``, ``TopKSAE``
(whose k is not saved, so it comes from the spec) and ``JumpSAE`` (thresholds stored as logs).

The state dicts are written here with the keys of overcomplete's modules (the default ``"linear"`` encoder is an
``MLPEncoder`` without hidden blocks: ``encoder.final_block.0`` is its ``nn.Linear``); the reference latents are
overcomplete's ``encode`` written out in numpy.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cafe_core.cli import main
from cafe_core.plugins import PluginHost
from cafe_core.resolve import resolve
from cafe_core.spec import load_spec
from cafe_sae import SAEConfigError, SAEFileError, load

D, N, K, ROWS = 16, 48, 5, 40
TOLERANCE = 1e-9


def _state(jump=False, encoder="linear", seed=0):
    g = torch.Generator().manual_seed(seed)
    weight, bias = torch.randn(N, D, generator=g) * 0.5, torch.randn(N, generator=g) * 0.5
    if encoder == "linear":
        state = {"encoder.final_block.0.weight": weight, "encoder.final_block.0.bias": bias}
    else:  # an untied TieableEncoder with a bias
        state = {"encoder.weight": weight, "encoder.bias": bias}
    state.update({"dictionary._weights": torch.randn(N, D, generator=g), "dictionary.multiplier": torch.tensor(0.4)})
    if jump:
        state["thresholds"] = torch.rand(N, generator=g) * 2.0 - 1.0  # exp() of these: 0.37 .. 2.7
    return state


def _encoder(state):
    prefix = "encoder.final_block.0." if "encoder.final_block.0.weight" in state else "encoder."
    return state[prefix + "weight"].double().numpy(), state[prefix + "bias"].double().numpy()


def _overcomplete_latents(kind, state, h, k=K):
    weight, bias = _encoder(state)
    codes = np.maximum(h @ weight.T + bias, 0)  # the encoder's final ReLU
    if kind == "SAE":
        return codes
    if kind == "TopKSAE":
        out = np.zeros_like(codes)
        for i, row in enumerate(codes):
            keep = np.argsort(-row)[:k]
            out[i, keep] = row[keep]
        return out
    threshold = np.exp(state["thresholds"].double().numpy())
    return np.where(codes < threshold, 0.0, codes)


def _dictionary(state):
    weights = state["dictionary._weights"].double().numpy()
    normalised = weights / (np.linalg.norm(weights, axis=1, keepdims=True) + 1e-8)
    return normalised * np.exp(float(state["dictionary.multiplier"]))


def _inputs(seed=1):
    return np.random.default_rng(seed).normal(size=(ROWS, D)) * 1.5 + 2.5


def _load_via_spec(tmp_path, **section):
    lines = ['[backbone]\nname = "toy_vit"\n', '[sae]\nname = "file"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in section.items()]
    lines += ['\n[dataset]\nname = "shapes"\nsize = 2\n', "[targets]\nlatents = [0]\n",
              '[[attributors]]\nname = "random"']
    (tmp_path / "spec.toml").write_text("\n".join(lines) + "\n")
    spec, base = load_spec(tmp_path / "spec.toml")
    return resolve(spec, PluginHost(strict=True), base)["sae"][0].build()


def _encode(sae, h):
    return sae.to(torch.float64).encode(torch.from_numpy(h)).detach().numpy()


CASES = {
    "SAE": ({"architecture": "relu"}, False),
    "TopKSAE": ({"k": K}, False),
    "JumpSAE": ({}, True),
}


@pytest.mark.parametrize("saved_as", ["torch.save", "safetensors"])
@pytest.mark.parametrize("kind", list(CASES))
def test_latents_equal_overcomplete_encode(tmp_path, kind, saved_as):
    params, jump = CASES[kind]
    state = _state(jump=jump)
    path = tmp_path / ("sae.pth" if saved_as == "torch.save" else "sae.safetensors")
    torch.save(state, path) if saved_as == "torch.save" else save_file(state, str(path))
    sae = _load_via_spec(tmp_path, path=path.name, tokens="patch", layer=6, **params)
    assert (sae.layer, sae.tokens, sae.extra["source"]["format"]) == (6, "patch", "overcomplete")
    h = _inputs()
    expected = _overcomplete_latents(kind, state, h)
    np.testing.assert_allclose(_encode(sae, h), expected, rtol=0, atol=TOLERANCE)
    assert (expected > 0).any() and (expected == 0).any()
    if kind == "JumpSAE":  # the thresholds are stored as logs
        raw = np.where(_overcomplete_latents("SAE", state, h) < state["thresholds"].double().numpy(), 0.0,
                       _overcomplete_latents("SAE", state, h))
        assert np.abs(raw - expected).max() > 1e-2
    z = torch.from_numpy(expected)
    # the dictionary is normalised at load in float32, as overcomplete normalises it
    np.testing.assert_allclose(sae.decode(z).detach().numpy(), expected @ _dictionary(state), rtol=1e-5, atol=1e-5)


def test_jump_keeps_a_latent_equal_to_its_threshold(tmp_path):
    """overcomplete zeroes codes *below* the threshold (``codes < threshold``): one exactly at it is kept."""
    state = _state(jump=True)
    torch.save(state, tmp_path / "sae.pth")
    sae = _load_via_spec(tmp_path, path="sae.pth", tokens="all").to(torch.float64)
    torch.testing.assert_close(sae.threshold, torch.exp(state["thresholds"].double()))
    codes = torch.relu(sae.b_e.detach())  # the codes of an all-zero input
    with torch.no_grad():
        sae.threshold.copy_(codes)
    kept = sae.encode(torch.zeros(1, D, dtype=torch.float64))[0]
    assert (codes > 0).any() and torch.equal(kept, codes)


def test_untied_tieable_encoder(tmp_path):
    state = _state(encoder="tieable")
    torch.save(state, tmp_path / "sae.pth")
    sae = _load_via_spec(tmp_path, path="sae.pth", tokens="all", architecture="relu")
    h = _inputs()
    np.testing.assert_allclose(_encode(sae, h), _overcomplete_latents("SAE", state, h), rtol=0, atol=TOLERANCE)


def test_what_the_state_dict_cannot_say_must_be_given(tmp_path):
    torch.save(_state(), tmp_path / "sae.pth")
    with pytest.raises(SAEFileError, match=r"neither records which it is.*give k = \.\.\. for a TopKSAE"):
        _load_via_spec(tmp_path, path="sae.pth", tokens="all")
    with pytest.raises(SAEConfigError, match=r"overcomplete checkpoint, which does not record k"):
        _load_via_spec(tmp_path, path="sae.pth", tokens="all", architecture="topk")
    with pytest.raises(SAEConfigError, match=r"k does not apply to .*a relu SAE"):
        _load_via_spec(tmp_path, path="sae.pth", tokens="all", architecture="relu", k=3)
    with pytest.raises(SAEConfigError, match=r"does not record which tokens"):
        _load_via_spec(tmp_path, path="sae.pth", k=K)
    torch.save(_state(jump=True), tmp_path / "jump.pth")
    with pytest.raises(SAEConfigError, match=r"architecture = 'topk' but .*records architecture = 'jumprelu'"):
        _load_via_spec(tmp_path, path="jump.pth", tokens="all", architecture="topk")
    with pytest.raises(SAEConfigError, match=r"subtract_decoder_bias does not apply"):
        _load_via_spec(tmp_path, path="jump.pth", tokens="all", subtract_decoder_bias=True)


def test_encoders_that_are_not_linear_are_refused(tmp_path):
    state = _state()
    state["encoder.final_block.1.weight"] = torch.ones(N)  # mlp_ln_1: a LayerNorm after the linear map
    state["encoder.final_block.1.bias"] = torch.zeros(N)
    torch.save(state, tmp_path / "mlp.pth")
    unknown = r"'encoder\.final_block\.1\.weight'.* that an overcomplete SAE with a linear encoder does not have"
    with pytest.raises(SAEFileError, match=unknown):
        _load_via_spec(tmp_path, path="mlp.pth", tokens="all", architecture="relu")
    tied = {key: value for key, value in _state().items() if not key.startswith("encoder.")}
    torch.save(tied, tmp_path / "tied.pth")
    with pytest.raises(SAEFileError, match=r"no linear encoder weight .*tied to the dictionary"):
        _load_via_spec(tmp_path, path="tied.pth", tokens="all", architecture="relu")
    nan = _state()
    nan["encoder.final_block.0.bias"][2] = float("nan")
    torch.save(nan, tmp_path / "nan.pth")
    with pytest.raises(SAEFileError, match=r"'b_e' of .*nan\.pth holds 1 NaN"):
        _load_via_spec(tmp_path, path="nan.pth", tokens="all", architecture="relu")


def test_convert_records_the_k_given(tmp_path):
    state = _state()
    torch.save(state, tmp_path / "sae.pth")
    out = tmp_path / "cafe.safetensors"
    assert main(["sae", "convert", str(tmp_path / "sae.pth"), str(out), "--tokens", "all", "--k", "7"]) == 0
    converted = load(out)
    assert (converted.architecture, converted.k) == ("topk", 7)
    h = _inputs()
    np.testing.assert_allclose(_encode(converted, h), _overcomplete_latents("TopKSAE", state, h, k=7), atol=TOLERANCE)
