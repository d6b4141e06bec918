"""saev checkpoints (``sae.pt``: a JSON header line, then ``torch.save`` of the state dict) load by path and give
saev's latents, for every header version and activation.

The files are written here as saev's ``dump`` writes them (header keys, parameter names and orientation); the
reference latents are saev's formulas written out in numpy.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from cafe_core.cli import main
from cafe_core.plugins import PluginHost
from cafe_core.resolve import resolve
from cafe_core.spec import load_spec
from cafe_sae import SAEConfigError, SAEFileError, load

D_MODEL, EXP, K, ROWS = 16, 3, 5, 40
D_SAE = D_MODEL * EXP
TOLERANCE = 1e-9


def _state(seed=0, threshold=None):
    """saev's parameters: W_enc [d_model, d_sae], b_enc, W_dec [d_sae, d_model], b_dec (+ the BatchTopK buffer)."""
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(D_SAE, D_MODEL, generator=g)
    state = {
        "W_dec": w_dec / w_dec.norm(dim=1, keepdim=True),
        "b_dec": torch.randn(D_MODEL, generator=g) + 1.0,
        "W_enc": torch.randn(D_MODEL, D_SAE, generator=g) * 0.5,
        "b_enc": torch.randn(D_SAE, generator=g) * 0.5,
    }
    if threshold is not None:
        state["activation.threshold"] = torch.tensor(float(threshold))
    return state


def _activation_payload(name):
    """The schema-5 serialisation of saev's activation dataclasses."""
    no_sparsity = {"cls": "NoSparsity", "params": {"key": "no-sparsity"}}
    auxk = {"cls": "AuxK", "params": {"key": "auxk", "k_aux": 512, "alpha": 0.03125}}
    if name == "Relu":
        l1 = {"cls": "L1Sparsity", "params": {"key": "l1-sparsity", "coeff": 0.0004}}
        return {"cls": "Relu", "params": {"key": "relu", "sparsity": l1,
                                          "aux": {"cls": "NoAux", "params": {"key": "no-aux"}}}}
    params = {"key": "top-k" if name == "TopK" else "batch-top-k", "top_k": K, "sparsity": no_sparsity, "aux": auxk}
    if name == "BatchTopK":
        params["momentum"] = 0.1
    return {"cls": name, "params": params}


HEADERS = {
    # saev 0.1: the raw config, no schema
    "0.1": {"d_vit": D_MODEL, "exp_factor": EXP, "sparsity_coeff": 0.0004, "n_reinit_samples": 524288,
            "ghost_grads": False, "remove_parallel_grads": True, "normalize_w_dec": True, "seed": 0},
    # schema 1 as first written: the config class names the activation
    "schema 1 TopK": {"schema": 1, "cfg": {"d_vit": D_MODEL, "exp_factor": EXP, "n_reinit_samples": 524288,
                                           "remove_parallel_grads": True, "normalize_w_dec": True, "seed": 0,
                                           "top_k": K},
                      "cls": "TopK", "commit": "2c1f0de", "lib": "0.1.0"},
    "schema 3 TopK": {"schema": 3, "cfg": {"d_model": D_MODEL, "exp_factor": EXP, "n_reinit_samples": 524288,
                                           "remove_parallel_grads": True, "normalize_w_dec": True, "seed": 0,
                                           "activation": {"cls": "TopK", "params": {"top_k": K}}},
                      "commit": "unknown", "lib": "0.1.0"},
    **{
        f"schema 5 {name}": {"schema": 5, "cfg": {"d_model": D_MODEL, "d_sae": D_SAE,
                                                  "activation": _activation_payload(name), "reinit_blend": 0.8,
                                                  "reinit_enc_dec_tranpose": True, "remove_parallel_grads": True,
                                                  "normalize_w_dec": True},
                             "commit": "unknown", "lib": "0.1.0"}
        for name in ("Relu", "TopK", "BatchTopK")
    },
}


def _write(path, header, state):
    """saev's dump: the header as one JSON line, then torch.save of the state dict in the same file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path.write_bytes(json.dumps(header, separators=(",", ":")).encode() + b"\n" + buffer.getvalue())
    return path


def _saev_latents(kind, state, h, *, subtract, mean=0.0, scalar=1.0):
    """saev's encoder: x = (h - mean) / scalar, pre = (x - b_dec?) W_enc + b_enc, then the activation."""
    w = {name: t.double().numpy() for name, t in state.items()}
    x = (h - mean) / scalar
    if subtract:
        x = x - w["b_dec"]
    pre = x @ w["W_enc"] + w["b_enc"]
    if kind == "Relu":
        return np.maximum(pre, 0)
    if kind == "TopK":  # keeps the k largest values as they are, negative ones too
        out = np.zeros_like(pre)
        for i, row in enumerate(pre):
            keep = np.argsort(-row)[:K]
            out[i, keep] = row[keep]
        return out
    threshold = float(w["activation.threshold"])
    return np.where(pre > threshold, pre, 0.0) if threshold > 0 else np.where(pre > 0, pre, 0.0)


def _inputs(seed=1):
    return np.random.default_rng(seed).normal(size=(ROWS, D_MODEL)) * 1.5 + 2.5


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


RAW = {"input_mean": 0, "input_scalar": 1}

CASES = {
    # header: (activation, b_dec subtracted by the code that wrote it, BatchTopK threshold)
    "0.1": ("Relu", True, None),
    "schema 1 TopK": ("TopK", True, None),
    "schema 3 TopK": ("TopK", False, None),
    "schema 5 Relu": ("Relu", False, None),
    "schema 5 TopK": ("TopK", False, None),
    "schema 5 BatchTopK": ("BatchTopK", False, 0.8),
}


@pytest.mark.parametrize("header", list(CASES))
def test_latents_equal_saev_formula(tmp_path, header):
    kind, subtract, threshold = CASES[header]
    state = _state(threshold=threshold)
    _write(tmp_path / "run" / "sae.pt", HEADERS[header], state)
    sae = _load_via_spec(tmp_path, path="run/sae.pt", tokens="patch", layer=10, **RAW)
    assert (sae.layer, sae.tokens, sae.site) == (10, "patch", "resid_post")
    h = _inputs()
    expected = _saev_latents(kind, state, h, subtract=subtract)
    np.testing.assert_allclose(_encode(sae, h), expected, rtol=0, atol=TOLERANCE)
    assert (expected != 0).any() and (expected == 0).any()
    # the header's b_dec convention matters
    other = _saev_latents(kind, state, h, subtract=not subtract)
    assert np.abs(other - expected).max() > 1e-2
    rows = torch.arange(ROWS) % D_SAE
    picked = sae.encode_latents(torch.from_numpy(h), rows).detach().numpy()
    np.testing.assert_allclose(picked, expected[np.arange(ROWS), rows.numpy()], rtol=0, atol=TOLERANCE)


def test_topk_keeps_negative_values_as_saev_does(tmp_path):
    state = _state()
    with torch.no_grad():
        state["b_enc"] -= 20.0  # pre-activations mostly negative: the top k include negative ones
    _write(tmp_path / "sae.pt", HEADERS["schema 5 TopK"], state)
    sae = _load_via_spec(tmp_path, path="sae.pt", tokens="all", **RAW)
    h = _inputs()
    expected = _saev_latents("TopK", state, h, subtract=False)
    assert (expected < 0).any() and ((expected != 0).sum(axis=1) == K).all()
    np.testing.assert_allclose(_encode(sae, h), expected, rtol=0, atol=TOLERANCE)
    assert np.abs(np.maximum(expected, 0) - expected).max() > 1e-2  # a ReLU would change them


def test_batchtopk_with_a_non_positive_threshold_is_a_relu(tmp_path):
    state = _state(threshold=-0.3)
    _write(tmp_path / "sae.pt", HEADERS["schema 5 BatchTopK"], state)
    sae = _load_via_spec(tmp_path, path="sae.pt", tokens="all", **RAW)
    h = _inputs()
    expected = _saev_latents("BatchTopK", state, h, subtract=False)
    np.testing.assert_allclose(expected, _saev_latents("Relu", state, h, subtract=False))
    np.testing.assert_allclose(_encode(sae, h), expected, rtol=0, atol=TOLERANCE)


def test_normalisation_constants_are_required_params_and_applied(tmp_path):
    state = _state()
    _write(tmp_path / "sae.pt", HEADERS["0.1"], state)
    with pytest.raises(SAEConfigError, match=r"saev checkpoint, which does not record input_mean.*or 0 for raw"):
        _load_via_spec(tmp_path, path="sae.pt", tokens="patch", input_scalar=1)
    with pytest.raises(SAEConfigError, match=r"does not record input_scalar.*or 1 for raw"):
        _load_via_spec(tmp_path, path="sae.pt", tokens="patch", input_mean=0)
    mean = np.random.default_rng(5).normal(size=D_MODEL).astype(np.float32) + 2.0
    np.save(tmp_path / "mean.npy", mean)
    sae = _load_via_spec(tmp_path, path="sae.pt", tokens="patch", input_mean="mean.npy", input_scalar=3.5)
    assert sae.normalization == "shift_scale"
    h = _inputs()
    expected = _saev_latents("Relu", state, h, subtract=True, mean=mean.astype(np.float64), scalar=3.5)
    np.testing.assert_allclose(_encode(sae, h), expected, rtol=0, atol=TOLERANCE)
    assert np.abs(_saev_latents("Relu", state, h, subtract=True) - expected).max() > 1e-2
    np.save(tmp_path / "short.npy", mean[:4])
    with pytest.raises(SAEFileError, match=r"input_mean .*short\.npy holds \[4\], not one vector of the SAE's width"):
        _load_via_spec(tmp_path, path="sae.pt", tokens="patch", input_mean="short.npy", input_scalar=3.5)


def test_the_spec_can_override_the_b_dec_convention(tmp_path):
    state = _state()
    _write(tmp_path / "sae.pt", HEADERS["schema 5 Relu"], state)
    sae = _load_via_spec(tmp_path, path="sae.pt", tokens="patch", subtract_decoder_bias=True, **RAW)
    h = _inputs()
    np.testing.assert_allclose(_encode(sae, h), _saev_latents("Relu", state, h, subtract=True), rtol=0, atol=TOLERANCE)
    assert sae.extra["source"]["subtract_decoder_bias"] is True


def test_what_saev_does_not_record_must_be_given(tmp_path):
    _write(tmp_path / "sae.pt", HEADERS["schema 5 TopK"], _state())
    with pytest.raises(SAEConfigError, match=r"does not record which tokens"):
        _load_via_spec(tmp_path, path="sae.pt", **RAW)
    sae = _load_via_spec(tmp_path, path=".", tokens="cls", **RAW)  # the folder holding sae.pt
    assert sae.layer is None and sae.k == K  # the run's plan then asks for `layer`
    with pytest.raises(SAEConfigError, match=r"k = 6 but .* records k = 5"):
        _load_via_spec(tmp_path, path="sae.pt", tokens="cls", k=6, **RAW)


def test_unusable_saev_files_are_refused(tmp_path):
    header = {**HEADERS["schema 1 TopK"], "cls": "BatchTopK"}
    _write(tmp_path / "a" / "sae.pt", header, _state())
    with pytest.raises(SAEFileError, match=r"BatchTopK SAE without the inference threshold.*rest of its batch"):
        _load_via_spec(tmp_path, path="a/sae.pt", tokens="all", **RAW)
    _write(tmp_path / "b" / "sae.pt", {**HEADERS["schema 5 Relu"], "schema": 9}, _state())
    with pytest.raises(SAEFileError, match=r"schema 9.*schemas 1 to 5"):
        _load_via_spec(tmp_path, path="b/sae.pt", tokens="all", **RAW)
    path = _write(tmp_path / "c" / "sae.pt", HEADERS["schema 5 Relu"], _state())
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(SAEFileError, match=r"c/sae\.pt as a torch\.save file .*damaged, truncated"):
        _load_via_spec(tmp_path, path="c/sae.pt", tokens="all", **RAW)
    bad = _state()
    bad["W_dec"][0, 0] = float("inf")
    _write(tmp_path / "d" / "sae.pt", HEADERS["schema 5 Relu"], bad)
    with pytest.raises(SAEFileError, match=r"'W_d' of .*d/sae\.pt holds 1 NaN or infinite"):
        _load_via_spec(tmp_path, path="d/sae.pt", tokens="all", **RAW)
    _write(tmp_path / "e" / "sae.pt", HEADERS["schema 5 Relu"], {**_state(), "W_enc": torch.zeros(D_SAE, D_MODEL)})
    with pytest.raises(SAEFileError, match=r"'W_enc' has shape \[48, 16\] but a saev Relu SAE of these sizes needs"):
        _load_via_spec(tmp_path, path="e/sae.pt", tokens="all", **RAW)


def test_convert_keeps_the_normalisation(tmp_path, capsys):
    state = _state(threshold=0.5)
    _write(tmp_path / "sae.pt", HEADERS["schema 5 BatchTopK"], state)
    out = tmp_path / "cafe.safetensors"
    args = ["sae", "convert", str(tmp_path / "sae.pt"), str(out), "--tokens", "patch", "--layer", "4",
            "--input-mean", "1.5", "--input-scalar", "2"]
    assert main(args) == 0, capsys.readouterr().err
    converted = load(out)
    assert (converted.architecture, converted.layer, converted.normalization) == ("jumprelu", 4, "shift_scale")
    h = _inputs()
    expected = _saev_latents("BatchTopK", state, h, subtract=False, mean=1.5, scalar=2.0)
    np.testing.assert_allclose(_encode(converted, h), expected, rtol=0, atol=TOLERANCE)
