"""dictionary_learning checkpoints (``config.json`` + ``ae.pt``) load by path and give the latents of each
``dict_class``'s own ``encode``, without re-normalising the decoder or applying ``norm_factor`` again.

The files are written here with the classes' state-dict keys and the trainers' config fields; the reference
latents are the classes' ``encode`` formulas written out in numpy.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cafe_core.cli import main
from cafe_core.plugins import PluginHost
from cafe_core.resolve import resolve
from cafe_core.spec import load_spec
from cafe_sae import SAEConfigError, SAEFileError, load

D, N, K, ROWS = 16, 48, 5, 40
TOLERANCE = 1e-9

TRAINERS = {
    "AutoEncoder": "StandardTrainer",
    "AutoEncoderNew": "StandardTrainerAprilUpdate",
    "GatedAutoEncoder": "GatedSAETrainer",
    "AutoEncoderTopK": "TopKTrainer",
    "BatchTopKSAE": "BatchTopKTrainer",
    "MatryoshkaBatchTopKSAE": "MatryoshkaBatchTopKTrainer",
    "JumpReluAutoEncoder": "JumpReluTrainer",
}


def _state(dict_class, seed=0, threshold=0.7):
    """The state dict of each class (its parameters and buffers, with the library's names and shapes)."""
    g = torch.Generator().manual_seed(seed)
    decoder = torch.randn(D, N, generator=g) * torch.linspace(0.3, 2.5, N)  # column norms far from 1
    encoder = torch.randn(N, D, generator=g) * 0.5
    bias_in, bias_lat = torch.randn(D, generator=g) + 1.0, torch.randn(N, generator=g) * 0.5
    if dict_class == "AutoEncoder":
        return {"bias": bias_in, "encoder.weight": encoder, "encoder.bias": bias_lat, "decoder.weight": decoder}
    if dict_class == "AutoEncoderNew":
        return {"encoder.weight": encoder, "encoder.bias": bias_lat, "decoder.weight": decoder, "decoder.bias": bias_in}
    if dict_class == "GatedAutoEncoder":
        return {"decoder_bias": bias_in, "encoder.weight": encoder, "r_mag": torch.randn(N, generator=g) * 0.3,
                "gate_bias": torch.randn(N, generator=g), "mag_bias": bias_lat, "decoder.weight": decoder}
    buffers = {"k": torch.tensor(K, dtype=torch.int), "threshold": torch.tensor(threshold, dtype=torch.float32)}
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):
        return {**buffers, "decoder.weight": decoder, "encoder.weight": encoder, "encoder.bias": bias_lat,
                "b_dec": bias_in}
    if dict_class == "MatryoshkaBatchTopKSAE":
        return {**buffers, "group_sizes": torch.tensor([8, 16, 24]), "W_enc": encoder.t().contiguous(),
                "b_enc": bias_lat, "W_dec": decoder.t().contiguous(), "b_dec": bias_in}
    return {"W_enc": encoder.t().contiguous(), "b_enc": bias_lat, "W_dec": decoder.t().contiguous(), "b_dec": bias_in,
            "threshold": torch.rand(N, generator=g) * 1.5}


def _config(dict_class, **fields):
    """``config.json`` as ``trainSAE`` writes it: the trainer's ``config`` and the buffer's."""
    trainer = {
        "trainer_class": TRAINERS[dict_class],
        "dict_class": dict_class,
        "lr": 0.0003,
        "steps": 2000,
        "seed": 0,
        "activation_dim": D,
        "dict_size": N,
        "device": "cuda:0",
        "layer": 3,
        "lm_name": "vit_tiny",
        "wandb_name": f"{TRAINERS[dict_class]}-vit_tiny-resid_post_layer_3",
        "submodule_name": "resid_post_layer_3",
    }
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE"):
        trainer["k"] = K
    trainer.update(fields)
    return {"trainer": trainer, "buffer": {"d_submodule": D, "io": "out", "n_ctxs": 3000, "ctx_len": 128}}


def _write(folder, config, state):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=4))
    torch.save(state, folder / "ae.pt")
    return folder


def _relu(x):
    return np.maximum(x, 0)


def _library_latents(dict_class, state, h):
    """Each class's ``encode`` (``use_threshold`` as its default)."""
    w = {name: t.double().numpy() for name, t in state.items()}
    if dict_class == "AutoEncoder":
        return _relu((h - w["bias"]) @ w["encoder.weight"].T + w["encoder.bias"])
    if dict_class == "AutoEncoderNew":
        return _relu(h @ w["encoder.weight"].T + w["encoder.bias"])
    if dict_class == "GatedAutoEncoder":
        x_enc = (h - w["decoder_bias"]) @ w["encoder.weight"].T
        return ((x_enc + w["gate_bias"]) > 0) * _relu(np.exp(w["r_mag"]) * x_enc + w["mag_bias"])
    if dict_class == "JumpReluAutoEncoder":
        pre = h @ w["W_enc"] + w["b_enc"]
        return _relu(pre * (pre > w["threshold"]))
    if dict_class == "MatryoshkaBatchTopKSAE":
        post = _relu((h - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
        return post * (post > w["threshold"])
    post = _relu((h - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"])
    if dict_class == "BatchTopKSAE":
        return post * (post > w["threshold"])
    out = np.zeros_like(post)
    for i, row in enumerate(post):
        keep = np.argsort(-row)[:K]
        out[i, keep] = row[keep]
    return out


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


def _naive(dict_class, state, h):
    """What a loader that missed this class's detail would compute."""
    if dict_class == "AutoEncoder":  # from_pretrained's default unit-norm decoder scales each latent by its norm
        return _library_latents(dict_class, state, h) * np.linalg.norm(state["decoder.weight"].double().numpy(), axis=0)
    if dict_class == "JumpReluAutoEncoder":  # subtracting b_dec, as the other classes do
        return _library_latents(dict_class, state, h + state["b_dec"].double().numpy())
    if dict_class in ("BatchTopKSAE", "MatryoshkaBatchTopKSAE"):  # ignoring the inference threshold
        return _library_latents(dict_class, {**state, "threshold": torch.tensor(-1.0)}, h)
    if dict_class == "GatedAutoEncoder":  # the magnitude path without the gate
        return _library_latents(dict_class, {**state, "gate_bias": torch.full((N,), 1e6)}, h)
    if dict_class == "AutoEncoderNew":  # a b_dec subtracted as in AutoEncoder
        return _library_latents(dict_class, state, h - state["decoder.bias"].double().numpy())
    bias = state["b_dec"]  # TopK without its b_dec
    return _library_latents(dict_class, {**state, "b_dec": torch.zeros_like(bias)}, h)


@pytest.mark.parametrize("dict_class", list(TRAINERS))
def test_latents_equal_each_class_encode(tmp_path, dict_class):
    state = _state(dict_class)
    _write(tmp_path / "trainer_0", _config(dict_class), state)
    sae = _load_via_spec(tmp_path, path="trainer_0", tokens="patch")
    assert (sae.layer, sae.site, sae.tokens) == (3, "resid_post", "patch")
    h = _inputs()
    expected = _library_latents(dict_class, state, h)
    np.testing.assert_allclose(_encode(sae, h), expected, rtol=0, atol=TOLERANCE)
    assert (expected > 0).any() and (expected == 0).any()
    assert np.abs(_naive(dict_class, state, h) - expected).max() > 1e-2
    rows = torch.arange(ROWS) % N
    picked = sae.encode_latents(torch.from_numpy(h), rows).detach().numpy()
    np.testing.assert_allclose(picked, expected[np.arange(ROWS), rows.numpy()], rtol=0, atol=TOLERANCE)


def test_norm_factor_is_not_applied_again(tmp_path):
    """The library folds norm_factor into the saved biases; the saved SAE encodes raw activations."""
    state = _state("BatchTopKSAE")
    _write(tmp_path / "ae", _config("BatchTopKSAE", norm_factor=7.3), state)
    sae = _load_via_spec(tmp_path, path="ae", tokens="all")
    h = _inputs()
    expected = _library_latents("BatchTopKSAE", state, h)
    np.testing.assert_allclose(_encode(sae, h), expected, rtol=0, atol=TOLERANCE)
    assert np.abs(_library_latents("BatchTopKSAE", state, h / 7.3) - expected).max() > 1e-2


def test_batchtopk_before_any_threshold_was_learnt_is_a_relu(tmp_path):
    state = _state("BatchTopKSAE", threshold=-1.0)  # the buffer's initial value
    _write(tmp_path / "ae", _config("BatchTopKSAE"), state)
    h = _inputs()
    expected = _library_latents("BatchTopKSAE", state, h)
    np.testing.assert_allclose(_encode(_load_via_spec(tmp_path, path="ae/ae.pt", tokens="all"), h), expected,
                               rtol=0, atol=TOLERANCE)


def test_metadata_and_params(tmp_path):
    _write(tmp_path / "ae", _config("AutoEncoderTopK", submodule_name="mlp_out_layer_3"), _state("AutoEncoderTopK"))
    with pytest.raises(SAEConfigError, match=r"does not record which tokens"):
        _load_via_spec(tmp_path, path="ae")
    assert _load_via_spec(tmp_path, path="ae", tokens="patch").site == "mlp_out"
    with pytest.raises(SAEConfigError, match=r"layer 2 but .* trained on layer 3 \(it reads mlp_out_layer_3\)"):
        _load_via_spec(tmp_path, path="ae", tokens="patch", layer=2)
    with pytest.raises(SAEConfigError, match=r"k = 9 but .* records k = 5"):
        _load_via_spec(tmp_path, path="ae", tokens="patch", k=9)
    with pytest.raises(SAEConfigError, match=r"input_scalar does not apply"):
        _load_via_spec(tmp_path, path="ae", tokens="patch", input_scalar=2.0)


def test_inconsistent_or_unknown_checkpoints_are_refused(tmp_path):
    _write(tmp_path / "a", _config("AutoEncoderTopK", k=7), _state("AutoEncoderTopK"))
    with pytest.raises(SAEFileError, match=r"config\.json gives k = 7 but ae\.pt stores k = 5"):
        _load_via_spec(tmp_path, path="a", tokens="all")
    crosscoder = _config("AutoEncoder")
    crosscoder["trainer"]["dict_class"] = "CrossCoder"
    _write(tmp_path / "b", crosscoder, _state("AutoEncoder"))
    with pytest.raises(SAEFileError, match=r"dict_class 'CrossCoder'"):
        _load_via_spec(tmp_path, path="b", tokens="all")
    _write(tmp_path / "c", _config("AutoEncoder"), {**_state("AutoEncoder"), "bias": torch.zeros(D + 1)})
    with pytest.raises(SAEFileError, match=r"tensor 'bias' has shape \[17\] but a dictionary_learning AutoEncoder"):
        _load_via_spec(tmp_path, path="c", tokens="all")
    _write(tmp_path / "d", _config("GatedAutoEncoder"), {k: v for k, v in _state("GatedAutoEncoder").items()
                                                          if k != "r_mag"})
    with pytest.raises(SAEFileError, match=r"lacks tensor\(s\) 'r_mag' of a dictionary_learning GatedAutoEncoder"):
        _load_via_spec(tmp_path, path="d", tokens="all")


def test_convert_writes_a_cafe_checkpoint_with_the_same_latents(tmp_path):
    state = _state("JumpReluAutoEncoder")
    _write(tmp_path / "ae", _config("JumpReluAutoEncoder"), state)
    out = tmp_path / "cafe.safetensors"
    assert main(["sae", "convert", str(tmp_path / "ae"), str(out), "--tokens", "cls"]) == 0
    converted = load(out)
    assert (converted.architecture, converted.layer, converted.tokens) == ("jumprelu", 3, "cls")
    h = _inputs()
    np.testing.assert_allclose(_encode(converted, h), _library_latents("JumpReluAutoEncoder", state, h),
                               rtol=0, atol=TOLERANCE)
