"""The SAE classes beyond ReLU: JumpReLU, gated, TopK without ReLU or with decoder-norm rescaling, and the input
normalisations; their formulas, per-latent encoding, gradients and cafe checkpoints (format version 2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cafe_core.testing import check_sae
from cafe_sae import GatedSAE, JumpReLUSAE, ReluSAE, TopKSAE, load, save

D_IN, D_SAE, K = 6, 12, 3


def _randomise(sae, seed=1):
    """Random values for every tensor (biases and buffers included): no term of any formula is zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in list(sae.parameters()) + list(sae.buffers()):
            tensor.copy_(torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype))
        if isinstance(sae, TopKSAE) and sae.rescale_by_decoder_norm:
            sae.W_d.mul_(torch.linspace(0.2, 3.0, sae.d_sae))
        if isinstance(sae, JumpReLUSAE):
            sae.threshold.abs_()
    return sae


def _h(n=30, seed=2):
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 1.5 + 2.0


def _numpy(sae):
    return {name: getattr(sae, name).detach().numpy() for name in sae.tensor_names}


def _normalised(sae, h):
    x = h.numpy()
    if sae.normalization == "layer_norm":
        x = x - x.mean(axis=-1, keepdims=True)
        return x / (x.std(axis=-1, ddof=1, keepdims=True) + 1e-5)
    if sae.normalization == "constant_norm":
        return x * math.sqrt(D_IN) / np.linalg.norm(x, axis=-1, keepdims=True)
    if sae.normalization == "shift_scale":
        return (x - sae.input_mean.numpy()) / sae.input_scalar
    return x


def _reference(sae, h):
    """The documented formula of each class, in numpy."""
    w = _numpy(sae)
    x = _normalised(sae, h) - w["b_d"]
    if isinstance(sae, GatedSAE):
        fires = x @ w["W_e"].T + w["b_gate"] > 0
        return fires * np.maximum(x @ (w["W_e"] * np.exp(w["r_mag"])[:, None]).T + w["b_mag"], 0)
    pre = x @ w["W_e"].T + w["b_e"]
    if isinstance(sae, JumpReLUSAE):
        opened = pre >= w["threshold"] if sae.threshold_inclusive else pre > w["threshold"]
        return np.maximum(pre, 0) * opened
    if isinstance(sae, TopKSAE):
        if sae.rescale_by_decoder_norm:
            pre = pre * np.linalg.norm(w["W_d"], axis=0)
        out = np.zeros_like(pre)
        for i, row in enumerate(pre):
            keep = np.argsort(-row)[: sae.k]
            out[i, keep] = np.maximum(row[keep], 0) if sae.relu_after_topk else row[keep]
        return out
    return np.maximum(pre, 0)


def _make(name):
    kwargs = {"dtype": torch.float64, "layer": 2, "tokens": "all"}
    factories = {
        "jumprelu": lambda: JumpReLUSAE(D_IN, D_SAE, **kwargs),
        "jumprelu inclusive": lambda: JumpReLUSAE(D_IN, D_SAE, threshold_inclusive=True, **kwargs),
        "gated": lambda: GatedSAE(D_IN, D_SAE, **kwargs),
        "topk without relu": lambda: TopKSAE(D_IN, D_SAE, k=K, relu_after_topk=False, **kwargs),
        "topk rescaled": lambda: TopKSAE(D_IN, D_SAE, k=K, rescale_by_decoder_norm=True, **kwargs),
        "relu layer_norm": lambda: ReluSAE(D_IN, D_SAE, normalization="layer_norm", **kwargs),
        "relu constant_norm": lambda: ReluSAE(D_IN, D_SAE, normalization="constant_norm", **kwargs),
        "relu shift_scale": lambda: ReluSAE(D_IN, D_SAE, normalization="shift_scale", input_scalar=2.5, **kwargs),
        "gated layer_norm": lambda: GatedSAE(D_IN, D_SAE, normalization="layer_norm", **kwargs),
    }
    return _randomise(factories[name]())


NAMES = ["jumprelu", "jumprelu inclusive", "gated", "topk without relu", "topk rescaled", "relu layer_norm",
         "relu constant_norm", "relu shift_scale", "gated layer_norm"]


@pytest.mark.parametrize("name", NAMES)
def test_encode_matches_the_documented_formula(name):
    sae = _make(name)
    h = _h()
    expected = _reference(sae, h)
    np.testing.assert_allclose(sae.encode(h).detach().numpy(), expected, rtol=0, atol=1e-12)
    assert (expected != 0).any() and (expected == 0).any()


@pytest.mark.parametrize("name", NAMES)
def test_encode_latents_value_and_gradient_match_encode(name):
    sae = _make(name)
    h = _h(40)
    latents = (torch.arange(40) * 7) % D_SAE
    full = sae.encode(h)[torch.arange(40), latents]
    torch.testing.assert_close(sae.encode_latents(h, latents), full, rtol=0, atol=1e-12)
    pre = sae.pre_activation(h)[torch.arange(40), latents]
    torch.testing.assert_close(sae.pre_activation_latents(h, latents), pre, rtol=0, atol=1e-12)
    check_sae(sae, h)


@pytest.mark.parametrize("name", ["jumprelu", "gated", "topk rescaled"])
def test_normalize_decoder_keeps_the_function(name):
    sae = _make(name)
    h = _h()
    before_h_hat, before_z = sae(h)
    norms = sae.W_d.detach().norm(dim=0)
    sae.normalize_decoder_()
    after_h_hat, after_z = sae(h)
    torch.testing.assert_close(after_h_hat, before_h_hat)
    scale = torch.ones_like(norms) if name == "topk rescaled" else norms  # rescaled latents already carry the norm
    torch.testing.assert_close(after_z, before_z * scale)
    torch.testing.assert_close(sae.W_d.detach().norm(dim=0), torch.ones(D_SAE, dtype=torch.float64))


@pytest.mark.parametrize("name", ["relu layer_norm", "relu constant_norm", "relu shift_scale"])
def test_forward_maps_the_reconstruction_back_to_the_input_scale(name):
    sae = _make(name)
    h = _h()
    h_hat, z = sae(h)
    x_hat = sae.decode(z).detach().numpy()
    x = h.numpy()
    if sae.normalization == "layer_norm":
        expected = x_hat * x.std(axis=-1, ddof=1, keepdims=True) + x.mean(axis=-1, keepdims=True)
    elif sae.normalization == "constant_norm":
        expected = x_hat * np.linalg.norm(x, axis=-1, keepdims=True) / math.sqrt(D_IN)
    else:
        expected = x_hat * sae.input_scalar + sae.input_mean.numpy()
    np.testing.assert_allclose(h_hat.detach().numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip_keeps_everything(tmp_path, name):
    sae = _make(name)
    path = save(sae, tmp_path / "sae.safetensors")
    loaded = load(path)
    assert type(loaded) is type(sae) and loaded.config() == sae.config()
    assert loaded.tensor_names == sae.tensor_names
    for name in sae.tensor_names:
        assert torch.equal(getattr(loaded, name), getattr(sae, name))
    h = _h()  # equal tensors; memory alignment may still change the last bit of a reduction
    torch.testing.assert_close(loaded.encode(h), sae.encode(h), rtol=0, atol=1e-12)
    torch.testing.assert_close(loaded(h)[0], sae(h)[0], rtol=0, atol=1e-12)


def test_gated_checkpoint_holds_its_own_tensors_and_no_encoder_bias(tmp_path):
    from safetensors import safe_open

    path = save(_make("relu shift_scale"), tmp_path / "relu.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        assert set(handle.keys()) == {"W_e", "b_e", "b_d", "W_d", "b_h", "input_mean"}
    path = save(_make("gated"), tmp_path / "gated.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        assert set(handle.keys()) == {"W_e", "b_gate", "r_mag", "b_mag", "b_d", "W_d", "b_h"}
