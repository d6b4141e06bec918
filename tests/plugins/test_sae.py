"""Tests of the cafe-plugin-sae distribution: ReLU and TopK SAEs, cafe checkpoints and their registration."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from cafe_core.errors import CafeError
from cafe_core.plugins import PluginHost
from cafe_core.protocols import SAE, TargetFunction
from cafe_sae import ReluSAE, SAEConfigError, SAEFileError, TopKSAE, load, save
from cafe_sae.loading import load_file as load_any
from cafe_sae.loading import load_relu, load_topk

D_IN, D_SAE, K = 6, 10, 3


def _randomise(sae, seed):
    """Give every parameter (biases included) random values, so that no term of the formula is zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=param.dtype))
    return sae


@pytest.fixture(params=["relu", "topk"])
def sae(request):
    if request.param == "relu":
        model = ReluSAE(D_IN, D_SAE, layer=2, dtype=torch.float64)
    else:
        model = TopKSAE(D_IN, D_SAE, k=K, layer=2, dtype=torch.float64)
    return _randomise(model, seed=1)


def _weights(sae):
    return {name: getattr(sae, name).detach().numpy() for name in ("W_e", "b_e", "b_d", "W_d", "b_h")}


def _reference_encode(sae, h):
    """z written out in numpy, row by row, from the paper's formula."""
    w = _weights(sae)
    out = np.zeros((h.shape[0], sae.d_sae))
    for i, row in enumerate(h):
        pre = w["W_e"] @ (row - w["b_d"]) + w["b_e"]
        if isinstance(sae, TopKSAE):
            keep = np.argsort(-pre)[: sae.k]
            masked = np.zeros_like(pre)
            masked[keep] = pre[keep]
            pre = masked
        out[i] = np.maximum(pre, 0.0)
    return out


def _reference_latent_torch(sae, h, latents):
    """encode(h)[i, latents[i]] through a plain torch formula over the full dictionary (for autograd)."""
    pre = (h - sae.b_d.detach()) @ sae.W_e.detach().T + sae.b_e.detach()
    if isinstance(sae, TopKSAE):
        keep = torch.zeros_like(pre).scatter(1, pre.detach().argsort(dim=1, descending=True)[:, : sae.k], 1.0)
        pre = pre * keep
    return torch.relu(pre)[torch.arange(h.shape[0]), latents]


def _h(n=7, seed=2):
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# -- the function ---------------------------------------------------------------------------------------------


def test_encode_matches_numpy_formula(sae):
    h = _h()
    np.testing.assert_allclose(sae.encode(h).detach().numpy(), _reference_encode(sae, h.numpy()), atol=1e-12)


def test_topk_keeps_at_most_k_latents():
    sae = _randomise(TopKSAE(D_IN, D_SAE, k=K, dtype=torch.float64), seed=3)
    z = sae.encode(_h(50))
    assert int((z > 0).sum(dim=1).max()) <= K
    assert bool((z >= 0).all())


def test_decode_matches_numpy_formula(sae):
    z = torch.rand(4, D_SAE, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    w = _weights(sae)
    expected = np.stack([w["W_d"] @ row + w["b_h"] for row in z.numpy()])
    np.testing.assert_allclose(sae.decode(z).detach().numpy(), expected, atol=1e-12)


def test_forward_returns_reconstruction_and_latents(sae):
    h = _h()
    h_hat, z = sae(h)
    torch.testing.assert_close(z, sae.encode(h))
    torch.testing.assert_close(h_hat, sae.decode(sae.encode(h)))


def test_encode_accepts_any_leading_dimensions(sae):
    h = _h(12).reshape(3, 4, D_IN)
    torch.testing.assert_close(sae.encode(h), sae.encode(h.reshape(12, D_IN)).reshape(3, 4, D_SAE))


def test_encode_latents_equals_gather_of_encode(sae):
    h = _h(40)
    latents = torch.arange(40) % D_SAE
    full = sae.encode(h)
    expected = full[torch.arange(40), latents]
    assert (expected > 0).any() and (expected == 0).any()  # both branches of the nonlinearity are exercised
    torch.testing.assert_close(sae.encode_latents(h, latents), expected, rtol=0, atol=1e-12)


def test_encode_latents_gradient_matches_reference(sae):
    h = _h(40)
    latents = (torch.arange(40) * 7) % D_SAE
    h1 = h.clone().requires_grad_(True)
    sae.encode_latents(h1, latents).sum().backward()
    h2 = h.clone().requires_grad_(True)
    _reference_latent_torch(sae, h2, latents).sum().backward()
    assert h2.grad.abs().sum() > 0
    torch.testing.assert_close(h1.grad, h2.grad, rtol=0, atol=1e-12)


def test_pre_activation_latents_equals_gather_of_pre_activation(sae):
    h = _h(20)
    latents = torch.arange(20) % D_SAE
    expected = sae.pre_activation(h)[torch.arange(20), latents]
    torch.testing.assert_close(sae.pre_activation_latents(h, latents), expected, rtol=0, atol=1e-12)


def test_relu_encode_latents_reads_only_selected_rows():
    sae = _randomise(ReluSAE(D_IN, D_SAE, dtype=torch.float64), seed=5)
    latents = torch.tensor([1, 4, 4, 1])
    h = _h(4)
    expected = sae.encode(h)[torch.arange(4), latents]
    others = torch.ones(D_SAE, dtype=torch.bool)
    others[latents] = False
    with torch.no_grad():
        sae.W_e[others] = float("nan")
        sae.b_e[others] = float("nan")
    result = sae.encode_latents(h, latents)
    assert torch.isfinite(result).all()
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-12)
    assert torch.isfinite(sae.pre_activation_latents(h, latents)).all()


def test_topk_encode_latents_gradient_flows_through_selected_rows_only():
    sae = _randomise(TopKSAE(D_IN, D_SAE, k=K, dtype=torch.float64), seed=6)
    h = _h(30)
    latents = sae.encode(h).argmax(dim=1)  # active latents, so the value is not zero
    sae.encode_latents(h, latents).sum().backward()
    touched = sae.W_e.grad.abs().sum(dim=1) > 0
    expected = torch.zeros(D_SAE, dtype=torch.bool)
    expected[latents] = True
    assert torch.equal(touched, expected)


def test_encode_latents_rejects_bad_latents(sae):
    h = _h(3)
    with pytest.raises(IndexError, match=r"\[0, 10\)"):
        sae.encode_latents(h, torch.tensor([0, 10, 1]))
    with pytest.raises(IndexError):
        sae.encode_latents(h, torch.tensor([0, -1, 1]))
    with pytest.raises(TypeError, match="integer"):
        sae.encode_latents(h, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="one per row"):
        sae.encode_latents(h, torch.tensor([0, 1]))


def test_target_function_reads_the_sae_through_encode_latents(sae):
    tokens = torch.randn(3, 5, D_IN, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    latents, positions = torch.tensor([2, 9, 0]), torch.tensor([4, 0, 2])
    target = TargetFunction(backbone=None, sae=sae, layer=2, latents=latents, positions=positions)
    expected = torch.stack([sae.encode(tokens[i, positions[i]])[latents[i]] for i in range(3)])
    torch.testing.assert_close(target.from_tokens(tokens), expected)


def test_satisfies_the_sae_protocol(sae):
    assert isinstance(sae, SAE)
    assert (sae.d_in, sae.d_sae, sae.layer, sae.tokens, sae.site) == (D_IN, D_SAE, 2, "patch", "resid_post")
    assert sae.nonlinearity == sae.architecture


# -- loss, normalisation, initialisation ------------------------------------------------------------------------


def test_loss_on_hand_computed_case():
    sae = ReluSAE(2, 2, dtype=torch.float64)
    with torch.no_grad():
        sae.W_e.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
        sae.W_d.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
        sae.b_h.copy_(torch.tensor([0.5, 0.0]))
    h = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=torch.float64)
    # row 1: z = (1, 0), h_hat = (2.5, 0), error^2 = 2.25 + 4 = 6.25, |z| = 1
    # row 2: z = (3, 1), h_hat = (6.5, 1), error^2 = 12.25 + 4 = 16.25, |z| = 4
    loss = sae.loss(h, l1_coefficient=0.1)
    assert loss.mse.item() == pytest.approx((6.25 + 16.25) / 2)
    assert loss.l1.item() == pytest.approx((1 + 4) / 2)
    assert loss.total.item() == pytest.approx(11.25 + 0.1 * 2.5)


def test_loss_is_differentiable_wrt_parameters(sae):
    sae.loss(_h(), l1_coefficient=1e-3).total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in sae.parameters())


def test_normalize_decoder_keeps_the_relu_function():
    sae = _randomise(ReluSAE(D_IN, D_SAE, dtype=torch.float64), seed=8)
    with torch.no_grad():
        sae.W_d[:, 3] = 0.0  # a dead column stays as it is
    h = _h(30)
    before_h_hat, before_z = sae(h)
    norms = sae.W_d.detach().norm(dim=0)
    assert sae.normalize_decoder_() is sae
    after_h_hat, after_z = sae(h)
    torch.testing.assert_close(after_h_hat, before_h_hat)
    torch.testing.assert_close(after_z, before_z * torch.where(norms > 0, norms, torch.ones_like(norms)))
    column_norms = sae.W_d.detach().norm(dim=0)
    assert column_norms[3] == 0
    torch.testing.assert_close(column_norms[torch.arange(D_SAE) != 3], torch.ones(D_SAE - 1, dtype=torch.float64))


def test_normalize_decoder_keeps_topk_function_when_norms_are_equal():
    sae = _randomise(TopKSAE(D_IN, D_SAE, k=K, dtype=torch.float64), seed=9)
    with torch.no_grad():
        sae.W_d.copy_(3.0 * sae.W_d / sae.W_d.norm(dim=0))
    h = _h(30)
    before = sae(h)[0]
    sae.normalize_decoder_()
    torch.testing.assert_close(sae(h)[0], before)


@pytest.mark.parametrize("cls, kwargs", [(ReluSAE, {}), (TopKSAE, {"k": 4})])
def test_random_init_is_seeded_and_well_formed(cls, kwargs):
    a = cls.random_init(16, 64, seed=3, layer=1, **kwargs)
    b = cls.random_init(16, 64, seed=3, layer=1, **kwargs)
    c = cls.random_init(16, 64, seed=4, layer=1, **kwargs)
    assert torch.equal(a.W_e, b.W_e) and not torch.equal(a.W_e, c.W_e)
    torch.testing.assert_close(a.W_d.detach().norm(dim=0), torch.ones(64))
    torch.testing.assert_close(a.W_d.detach(), (a.W_e / a.W_e.norm(dim=1, keepdim=True)).detach().T)
    for bias in (a.b_e, a.b_d, a.b_h):
        assert not bias.any()
    assert abs(a.W_e.std().item() - (2 / 16) ** 0.5) < 0.05


def test_token_set_given_as_site_moves_to_tokens_with_a_warning():
    with pytest.warns(DeprecationWarning, match="pass tokens='cls'"):
        sae = ReluSAE(4, 8, site="cls")
    assert (sae.tokens, sae.site) == ("cls", "resid_post")
    assert ReluSAE(4, 8, site="mlp_out").site == "mlp_out"


# -- checkpoints ------------------------------------------------------------------------------------------------


def test_save_load_round_trip(sae, tmp_path):
    sae.extra = {"backbone": "vit_b16", "steps": 100}
    path = save(sae, tmp_path / "nested" / "sae.safetensors", extra={"note": "test"})
    loaded = load(path)
    assert type(loaded) is type(sae)
    assert loaded.W_e.dtype == torch.float64
    expected = {**sae.config(), "extra": {"backbone": "vit_b16", "steps": 100, "note": "test"}}
    assert loaded.config() == expected
    h = _h()
    torch.testing.assert_close(loaded(h), sae(h), rtol=0, atol=0)
    for name in ("W_e", "b_e", "b_d", "W_d", "b_h"):
        assert isinstance(getattr(loaded, name), torch.nn.Parameter)


def test_saved_header_holds_the_documented_config(tmp_path):
    path = save(TopKSAE.random_init(4, 8, k=2, layer=5, tokens="cls"), tmp_path / "sae.safetensors")
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    header = json.loads(path.read_bytes()[8 : 8 + header_len])
    config = json.loads(header["__metadata__"]["cafe_sae"])
    assert config == {
        "format_version": 2,
        "architecture": "topk",
        "d_in": 4,
        "d_sae": 8,
        "layer": 5,
        "site": "resid_post",
        "tokens": "cls",
        "nonlinearity": "topk",
        "k": 2,
        "relu_after_topk": True,
        "rescale_by_decoder_norm": False,
        "normalization": "none",
        "extra": {},
    }
    assert header["W_e"]["shape"] == [8, 4] and header["W_d"]["shape"] == [4, 8]


def test_save_refuses_non_json_extra_and_non_finite_weights(tmp_path):
    sae = ReluSAE.random_init(4, 8)
    with pytest.raises(SAEConfigError, match="JSON"):
        save(sae, tmp_path / "a.safetensors", extra={"bad": object()})
    with torch.no_grad():
        sae.b_e[0] = float("inf")
    with pytest.raises(SAEConfigError, match="'b_e' holds 1 NaN or infinite"):
        save(sae, tmp_path / "b.safetensors")


def _good_file(tmp_path, name="good.safetensors"):
    return save(ReluSAE.random_init(4, 8, layer=3), tmp_path / name)


def _rewrite(path, tensors=None, config=None, drop_config=False):
    """Rewrite a checkpoint with altered tensors or config."""
    tensors = dict(load_file(str(path))) if tensors is None else tensors
    with open(path, "rb") as handle:
        header_len = struct.unpack("<Q", handle.read(8))[0]
        meta = json.loads(handle.read(header_len))["__metadata__"]
    if config is not None:
        meta["cafe_sae"] = config if isinstance(config, str) else json.dumps(config)
    save_file(tensors, str(path), metadata=None if drop_config else meta)
    return path


def _config(path):
    with open(path, "rb") as handle:
        header_len = struct.unpack("<Q", handle.read(8))[0]
        return json.loads(json.loads(handle.read(header_len))["__metadata__"]["cafe_sae"])


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(SAEFileError, match=r"does not exist; check the path"):
        load(tmp_path / "nope.safetensors")
    with pytest.raises(SAEFileError, match="is a directory.*cafe_sae.load_any"):
        load(tmp_path)


def test_corrupt_file_is_reported(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(SAEFileError, match=r"garbage\.safetensors as a safetensors file .*re-save it"):
        load(garbage)
    truncated = _good_file(tmp_path, "truncated.safetensors")
    truncated.write_bytes(truncated.read_bytes()[:-10])
    with pytest.raises(SAEFileError, match=r"truncated\.safetensors .*damaged, truncated"):
        load(truncated)


def test_file_without_config_is_reported(tmp_path):
    path = _rewrite(_good_file(tmp_path), drop_config=True)
    with pytest.raises(SAEFileError, match=r"good\.safetensors has no 'cafe_sae' config.*'relu' or 'topk'"):
        load(path)
    with pytest.raises(SAEConfigError, match="does not record architecture.*use SAE 'relu' or 'topk'"):
        load_any(path, tokens="patch")


def test_missing_tensor_is_reported(tmp_path):
    path = _good_file(tmp_path)
    tensors = dict(load_file(str(path)))
    del tensors["W_d"]
    _rewrite(path, tensors=tensors)
    with pytest.raises(SAEFileError, match=r"good\.safetensors lacks tensor\(s\) 'W_d'.*re-save"):
        load(path)


def test_unexpected_tensor_is_reported(tmp_path):
    path = _good_file(tmp_path)
    tensors = dict(load_file(str(path)))
    tensors["threshold"] = torch.zeros(8)
    _rewrite(path, tensors=tensors)
    with pytest.raises(SAEFileError, match=r"'threshold' that this SAE does not have.*JumpReLU"):
        load(path)
    with pytest.raises(SAEFileError, match=r"'threshold' that this SAE does not have"):
        load_any(path)


def test_shape_contradicting_config_is_reported(tmp_path):
    path = _good_file(tmp_path)
    config = _config(path)
    _rewrite(path, config={**config, "d_sae": 9})
    message = r"'W_e' of .*good\.safetensors has shape \[8, 4\] but its config .*d_sae=9.*\[9, 4\]"
    with pytest.raises(SAEFileError, match=message):
        load(path)
    with pytest.raises(SAEFileError, match=message):
        load_any(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_reported(tmp_path, value):
    path = _good_file(tmp_path)
    tensors = dict(load_file(str(path)))
    tensors["W_e"][2, 1] = value
    _rewrite(path, tensors=tensors)
    with pytest.raises(SAEFileError, match=r"'W_e' of .*good\.safetensors holds 1 NaN or infinite.*earlier checkpoint"):
        load(path)


V1_CONFIG = {"format_version": 1, "architecture": "relu", "d_in": 4, "d_sae": 8, "layer": 3, "site": "patch",
             "activation": "relu", "extra": {}}


def _version1_file(tmp_path, name="v1.safetensors"):
    """A checkpoint exactly as format version 1 wrote it (the toy plugin ships such files)."""
    return _rewrite(_good_file(tmp_path, name), config=V1_CONFIG)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"architecture": "gated"}, r"invalid \(architecture"),
        ({"site": "tokens"}, r"invalid \(site"),
        ({"d_in": -1}, r"invalid \(d_in"),
        ({"format_version": 7}, r"format_version 7.*upgrade cafe-plugin-sae"),
        ({"format_version": None}, r"format_version None.*re-save"),
        ({"architecture": "topk"}, r"topk SAE but gives no 'k'"),
        ({"architecture": "topk", "activation": "topk", "k": 99}, r"k=99, more than its d_sae=8"),
        ({"activation": "topk"}, r"contradicts itself: architecture 'relu' but activation 'topk'"),
        ({"unknown_key": 1}, r"invalid \(unknown_key"),
        ({"tokens": "patch"}, r"invalid \(tokens"),  # version 1 has no `tokens`
    ],
)
def test_invalid_version1_config_is_reported(tmp_path, change, message):
    path = _version1_file(tmp_path)
    _rewrite(path, config={**V1_CONFIG, **change})
    with pytest.raises(SAEFileError, match=message):
        load(path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"architecture": "sparse"}, r"invalid \(architecture"),
        ({"tokens": "tokens"}, r"invalid \(tokens"),
        ({"site": ""}, r"invalid \(site"),
        ({"format_version": 3}, r"format_version 3.*upgrade cafe-plugin-sae"),
        ({"architecture": "topk", "nonlinearity": "topk"}, r"topk SAE but gives no 'k', 'relu_after_topk'"),
        ({"k": 2}, r"gives 'k' for a relu SAE"),
        ({"threshold_inclusive": True}, r"gives 'threshold_inclusive' for a relu SAE"),
        ({"nonlinearity": "topk"}, r"contradicts itself: architecture 'relu' but nonlinearity 'topk'"),
        ({"normalization": "shift_scale"}, r"'input_scalar' belongs with 'shift_scale'"),
        ({"normalization": "batch_norm"}, r"invalid \(normalization"),
        ({"activation": "relu"}, r"invalid \(activation"),  # the version-1 name
    ],
)
def test_invalid_config_is_reported(tmp_path, change, message):
    path = _good_file(tmp_path)
    _rewrite(path, config={**_config(path), **change})
    with pytest.raises(SAEFileError, match=message):
        load(path)


def test_version1_file_reads_as_it_always_did(tmp_path):
    path = _version1_file(tmp_path)
    sae = load(path)
    assert (sae.tokens, sae.site, sae.layer, sae.normalization) == ("patch", "resid_post", 3, "none")
    w = {name: tensor.double() for name, tensor in load_file(str(path)).items()}
    h = torch.randn(9, 4, generator=torch.Generator().manual_seed(12), dtype=torch.float64) + 2.0
    expected = torch.relu((h - w["b_d"]) @ w["W_e"].T + w["b_e"])
    torch.testing.assert_close(sae.double().encode(h), expected, rtol=0, atol=1e-12)
    resaved = save(sae, tmp_path / "v2.safetensors")
    assert _config(resaved)["format_version"] == 2 and _config(resaved)["tokens"] == "patch"


def test_config_that_is_not_json_is_reported(tmp_path):
    path = _rewrite(_good_file(tmp_path), config="{not json")
    with pytest.raises(SAEFileError, match="not valid JSON"):
        load(path)


# -- loaders and their params -----------------------------------------------------------------------------------


def test_layer_mismatch_names_both_layers(tmp_path):
    path = _good_file(tmp_path)
    with pytest.raises(SAEConfigError, match=r"layer 7 but .*good\.safetensors was trained on layer 3"):
        load_relu(path, layer=7)
    assert load_relu(path, layer=3).layer == 3


def test_layer_is_filled_in_when_the_checkpoint_has_none(tmp_path):
    path = save(ReluSAE.random_init(4, 8), tmp_path / "sae.safetensors")
    assert load_any(path).layer is None
    assert load_any(path, layer=5).layer == 5


def test_tokens_and_site_mismatches_are_reported(tmp_path):
    path = _good_file(tmp_path)
    with pytest.raises(SAEConfigError, match=r"tokens 'cls' but .* tokens 'patch'"):
        load_any(path, tokens="cls")
    with pytest.raises(SAEConfigError, match=r"site 'mlp_out' but .* site 'resid_post'"):
        load_any(path, site="mlp_out")


def test_architecture_and_k_are_checked(tmp_path):
    relu_path = _good_file(tmp_path)
    topk_path = save(TopKSAE.random_init(4, 8, k=2), tmp_path / "topk.safetensors")
    with pytest.raises(SAEConfigError, match=r"holds a relu SAE, not a topk one; use SAE 'relu'"):
        load_topk(relu_path)
    with pytest.raises(SAEConfigError, match=r"holds a topk SAE, not a relu one"):
        load_relu(topk_path)
    with pytest.raises(SAEConfigError, match=r"k = 3 but .* records k = 2"):
        load_topk(topk_path, k=3)
    with pytest.raises(SAEConfigError, match="subtract_decoder_bias does not apply to .*a cafe checkpoint"):
        load_relu(relu_path, subtract_decoder_bias=False)
    assert isinstance(load_any(topk_path), TopKSAE) and load_topk(topk_path, k=2).k == 2


def test_plain_state_dict_in_native_layout(tmp_path):
    sae = _randomise(TopKSAE(D_IN, D_SAE, k=K), seed=10)
    path = tmp_path / "state.pt"
    torch.save(sae.state_dict(), path)
    loaded = load_topk(path, k=K, layer=4, tokens="all")
    assert (loaded.layer, loaded.tokens, loaded.site, loaded.k) == (4, "all", "resid_post", K)
    h = _h().float()
    torch.testing.assert_close(loaded(h), sae(h), rtol=0, atol=0)
    with pytest.raises(SAEConfigError, match="does not record k; give k"):
        load_topk(path, tokens="all")
    with pytest.raises(SAEConfigError, match="does not record which tokens"):
        load_topk(path, k=K)


def test_torch_file_that_is_not_a_state_dict_is_reported(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {"W_e": torch.zeros(2, 2)}, "step": 3}, path)
    with pytest.raises(SAEFileError, match=r"not a flat mapping of names to tensors"):
        load_relu(path, tokens="all")


@pytest.mark.parametrize("subtract", [None, True, False])
def test_plain_state_dict_in_w_enc_layout(tmp_path, subtract):
    generator = torch.Generator().manual_seed(11)
    w_enc, b_enc = torch.randn(D_IN, D_SAE, generator=generator), torch.randn(D_SAE, generator=generator)
    w_dec, b_dec = torch.randn(D_SAE, D_IN, generator=generator), torch.randn(D_IN, generator=generator)
    path = tmp_path / "sae_weights.safetensors"
    save_file({"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": b_dec}, str(path))
    sae = load_relu(path, layer=1, tokens="patch", subtract_decoder_bias=subtract)
    h = torch.randn(5, D_IN, generator=generator)
    shifted = h - b_dec if subtract in (None, True) else h
    z = torch.relu(shifted @ w_enc + b_enc)
    torch.testing.assert_close(sae.encode(h), z)
    torch.testing.assert_close(sae.decode(z), z @ w_dec + b_dec)
    assert sae.extra == {"source_layout": "W_enc/W_dec"}


def test_w_enc_layout_problems_are_reported(tmp_path):
    path = tmp_path / "sae_weights.safetensors"
    tensors = {"W_enc": torch.randn(4, 8), "b_enc": torch.randn(8), "W_dec": torch.randn(4, 8), "b_dec": torch.randn(4)}
    save_file(tensors, str(path))
    with pytest.raises(SAEFileError, match=r"'W_dec' has shape \[4, 8\] but .* needs \[8, 4\]"):
        load_relu(path, tokens="all")
    save_file({"encoder.weight": torch.randn(8, 4)}, str(path))
    with pytest.raises(SAEFileError, match=r"tensors of a known layout .*'encoder\.weight'.*W_enc"):
        load_relu(path, tokens="all")


# -- registration -----------------------------------------------------------------------------------------------


def test_entry_point_builds_each_registered_sae(tmp_path):
    relu_path = _good_file(tmp_path)
    topk_path = save(TopKSAE.random_init(4, 8, k=2, layer=1), tmp_path / "topk.safetensors")
    registry = PluginHost(strict=True).registry("sae")
    assert {"relu", "topk", "file"} <= set(registry.names())
    assert registry.get("relu").plugin == "sae"
    relu = registry.get("relu").build({"path": str(relu_path)})
    assert isinstance(relu, ReluSAE) and relu.layer == 3
    assert isinstance(registry.get("topk").build({"path": str(topk_path), "k": 2}), TopKSAE)
    assert isinstance(registry.get("file").build({"path": str(topk_path), "layer": 1}), TopKSAE)


@pytest.mark.parametrize("name", ["relu", "file"])
def test_built_sae_is_frozen_but_differentiable_wrt_its_input(tmp_path, name):
    sae = PluginHost(strict=True).registry("sae").get(name).build({"path": str(_good_file(tmp_path))})
    assert not any(p.requires_grad for p in sae.parameters())
    h = torch.randn(3, 4, requires_grad=True)
    sae.pre_activation_latents(h, torch.tensor([0, 5, 7])).sum().backward()
    torch.testing.assert_close(h.grad, sae.W_e[[0, 5, 7]])


def test_registered_errors_are_cafe_errors(tmp_path):
    registry = PluginHost(strict=True).registry("sae")
    with pytest.raises(CafeError, match="trained on layer 3"):
        registry.get("relu").build({"path": str(_good_file(tmp_path)), "layer": 0})


def test_params_reject_missing_paths_and_unknown_keys(tmp_path):
    registration = PluginHost(strict=True).registry("sae").get("relu")
    with pytest.raises(ValidationError, match="does not exist; check the path"):
        registration.validate({"path": str(tmp_path / "missing.safetensors")})
    registration.validate({"path": str(tmp_path)})  # a folder is a valid location; what it holds is read at build
    with pytest.raises(SAEFileError, match="holds no SAE checkpoint cafe recognises"):
        registration.build({"path": str(tmp_path)})
    with pytest.raises(ValidationError, match="device"):
        registration.validate({"path": str(_good_file(tmp_path)), "device": "cuda"})
    with pytest.raises(ValidationError, match="layer"):
        registration.validate({"path": str(_good_file(tmp_path)), "layer": -1})


def test_plugin_module_imports_neither_torch_nor_safetensors():
    code = "import sys, cafe_sae.plugin; print(sorted({'torch', 'safetensors'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
