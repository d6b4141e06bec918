"""SAELens checkpoints (``cfg.json`` + ``sae_weights.safetensors``) load by path and give SAELens' latents.

The checkpoints are written here with SAELens' key names, orientations and config fields; the reference latents
are SAELens' encoder formulas written out in numpy, independently of cafe's code.
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

D_IN, D_SAE, K, ROWS = 16, 48, 5, 40
TOLERANCE = 1e-9  # both sides compute in float64


# -- writing SAELens checkpoints ---------------------------------------------------------------------------------


def _tensors(architecture, seed=0, decoder_scale=(1.0, 1.0)):
    """SAELens parameters: W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_dec [d_in], and the architecture's own."""
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(D_SAE, D_IN, generator=g)
    low, high = decoder_scale
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True) * torch.linspace(low, high, D_SAE)[:, None]
    tensors = {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g) * 0.5,
        "W_dec": w_dec,
        "b_dec": torch.randn(D_IN, generator=g) + 1.0,
    }
    if architecture == "gated":
        tensors.update(
            b_gate=torch.randn(D_SAE, generator=g),
            b_mag=torch.randn(D_SAE, generator=g),
            r_mag=torch.randn(D_SAE, generator=g) * 0.3,
        )
    else:
        tensors["b_enc"] = torch.randn(D_SAE, generator=g) * 0.5
    if architecture == "jumprelu":
        tensors["threshold"] = torch.rand(D_SAE, generator=g) * 1.5
    return tensors


def _cfg(architecture, hook="blocks.9.hook_resid_post", **fields):
    """A SAELens 6 ``cfg.json`` as ``SAEConfig.to_dict()`` writes it."""
    cfg = {
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": "6.12.1",
            "sae_lens_training_version": "6.12.1",
            "model_name": "vit_tiny",
            "hook_name": hook,
            "hook_head_index": None,
            "prepend_bos": True,
        },
        "architecture": architecture,
    }
    if architecture == "topk":
        cfg.update(k=K, rescale_acts_by_decoder_norm=False)
    cfg.update(fields)
    return cfg


def _write(folder, cfg, tensors):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({name: t.contiguous() for name, t in tensors.items()}, str(folder / "sae_weights.safetensors"))
    return folder


# -- SAELens' formulas, independently ----------------------------------------------------------------------------


def _saelens_latents(cfg, tensors, h, scaling_factor=None):
    w = {name: t.double().numpy() for name, t in tensors.items()}
    x = h.astype(np.float64)
    norm = cfg["normalize_activations"]
    if norm == "layer_norm":
        x = x - x.mean(axis=-1, keepdims=True)
        x = x / (x.std(axis=-1, ddof=1, keepdims=True) + 1e-5)
    elif norm == "constant_norm_rescale":
        x = x * np.sqrt(D_IN) / np.linalg.norm(x, axis=-1, keepdims=True)
    elif norm == "expected_average_only_in":
        x = x * scaling_factor
    if cfg["apply_b_dec_to_input"]:
        x = x - w["b_dec"]
    architecture = cfg["architecture"]
    if architecture == "gated":
        fires = (x @ w["W_enc"] + w["b_gate"]) > 0
        magnitude = x @ (w["W_enc"] * np.exp(w["r_mag"])) + w["b_mag"]
        return fires * np.maximum(magnitude, 0)
    pre = x @ w["W_enc"] + w["b_enc"]
    if architecture == "standard":
        return np.maximum(pre, 0)
    if architecture == "jumprelu":
        return np.maximum(pre, 0) * (pre > w["threshold"])
    if cfg.get("rescale_acts_by_decoder_norm"):
        pre = pre * np.linalg.norm(w["W_dec"], axis=-1)
    out = np.zeros_like(pre)
    for i, row in enumerate(pre):
        keep = np.argsort(-row)[: cfg["k"]]
        out[i, keep] = np.maximum(row[keep], 0)
    return out


def _inputs(seed=1):
    """Activations with a clearly nonzero mean, as residual streams have."""
    return np.random.default_rng(seed).normal(size=(ROWS, D_IN)) * 1.5 + 2.5


def _load_via_spec(tmp_path, **section):
    """Build the SAE of a run spec whose [sae] section is ``section`` (paths relative to the spec's folder)."""
    lines = ['[backbone]\nname = "toy_vit"\n', '[sae]\nname = "file"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in section.items()]
    lines += ['\n[dataset]\nname = "shapes"\nsize = 2\n', "[targets]\nlatents = [0]\n",
              '[[attributors]]\nname = "random"']
    (tmp_path / "spec.toml").write_text("\n".join(lines) + "\n")
    spec, base = load_spec(tmp_path / "spec.toml")
    return resolve(spec, PluginHost(strict=True), base)["sae"][0].build()


def _encode(sae, h):
    return sae.to(torch.float64).encode(torch.from_numpy(h)).detach().numpy()


# -- latents -----------------------------------------------------------------------------------------------------

CASES = {
    "standard": ("standard", {}, "no_b_dec"),
    "standard without b_dec on the input": ("standard", {"apply_b_dec_to_input": False}, "b_dec"),
    "standard with layer_norm": ("standard", {"normalize_activations": "layer_norm"}, "torch_layer_norm"),
    "standard with constant_norm_rescale": ("standard", {"normalize_activations": "constant_norm_rescale"}, "no_norm"),
    "topk": ("topk", {}, "no_b_dec"),
    "topk rescaled by decoder norm": ("topk", {"rescale_acts_by_decoder_norm": True}, "no_rescale"),
    "jumprelu": ("jumprelu", {}, "no_threshold"),
    "gated": ("gated", {}, "no_gate"),
    "gated with layer_norm": ("gated", {"normalize_activations": "layer_norm"}, "no_norm"),
}


def _naive(kind, cfg, tensors, h):
    """What a loader that missed one detail would compute."""
    if kind == "no_b_dec":
        return _saelens_latents({**cfg, "apply_b_dec_to_input": False}, tensors, h)
    if kind == "b_dec":
        return _saelens_latents({**cfg, "apply_b_dec_to_input": True}, tensors, h)
    if kind == "no_norm":
        return _saelens_latents({**cfg, "normalize_activations": "none"}, tensors, h)
    if kind == "torch_layer_norm":
        normed = torch.nn.functional.layer_norm(torch.from_numpy(h), (D_IN,), eps=1e-5).numpy()
        return _saelens_latents({**cfg, "normalize_activations": "none"}, tensors, normed)
    if kind == "no_rescale":
        return _saelens_latents({**cfg, "rescale_acts_by_decoder_norm": False}, tensors, h)
    if kind == "no_threshold":
        return _saelens_latents({**cfg, "architecture": "standard"}, tensors, h)
    if kind == "no_gate":
        w = {n: t.double().numpy() for n, t in tensors.items()}
        return np.maximum((h - w["b_dec"]) @ (w["W_enc"] * np.exp(w["r_mag"])) + w["b_mag"], 0)
    raise AssertionError(kind)


@pytest.mark.parametrize("case", list(CASES))
def test_latents_equal_saelens_formula(tmp_path, case):
    architecture, fields, naive_kind = CASES[case]
    scale = (0.2, 3.0) if fields.get("rescale_acts_by_decoder_norm") else (1.0, 1.0)
    tensors = _tensors(architecture, decoder_scale=scale)
    cfg = _cfg(architecture, **fields)
    _write(tmp_path / "layer_9", cfg, tensors)
    sae = _load_via_spec(tmp_path, path="layer_9", tokens="patch")
    h = _inputs()
    expected = _saelens_latents(cfg, tensors, h)
    got = _encode(sae, h)
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)
    assert (expected > 0).any() and (expected == 0).any()
    # the detail this case is about changes the latents by far more than the tolerance
    assert np.abs(_naive(naive_kind, cfg, tensors, h) - expected).max() > 1e-2
    # encode_latents agrees with encode, latent by latent
    rows = torch.arange(ROWS) % D_SAE
    picked = sae.encode_latents(torch.from_numpy(h), rows).detach().numpy()
    np.testing.assert_allclose(picked, expected[np.arange(ROWS), rows.numpy()], rtol=0, atol=TOLERANCE)


def test_expected_average_scaling_comes_from_the_activation_scaler_file(tmp_path):
    tensors = _tensors("standard")
    cfg = _cfg("standard", normalize_activations="expected_average_only_in")
    folder = _write(tmp_path / "ckpt", cfg, tensors)
    with pytest.raises(SAEFileError, match="no activation_scaler.json.*input_scalar = 1 / scaling_factor"):
        _load_via_spec(tmp_path, path="ckpt", tokens="all")
    (folder / "activation_scaler.json").write_text(json.dumps({"scaling_factor": 0.25}))
    sae = _load_via_spec(tmp_path, path="ckpt", tokens="all")
    h = _inputs()
    expected = _saelens_latents(cfg, tensors, h, scaling_factor=0.25)
    np.testing.assert_allclose(_encode(sae, h), expected, rtol=1e-12, atol=1e-9)
    assert np.abs(_saelens_latents(cfg, tensors, h, scaling_factor=1.0) - expected).max() > 1e-2
    with pytest.raises(SAEFileError, match=r"input_scalar = 2\.0 but .*scaling_factor 0\.25"):
        _load_via_spec(tmp_path, path="ckpt", tokens="all", input_scalar=2.0)


def test_tensors_are_cast_to_the_config_dtype(tmp_path):
    tensors = _tensors("standard")
    _write(tmp_path / "ckpt", _cfg("standard", dtype="torch.float64"), tensors)
    assert _load_via_spec(tmp_path, path="ckpt", tokens="all").W_e.dtype == torch.float64


# -- where it reads ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hook, layer, site",
    [
        ("blocks.9.hook_resid_post", 9, "resid_post"),
        ("blocks.9.hook_resid_pre", 8, "resid_post"),  # the input of block 9 is the output of block 8
        ("blocks.0.hook_resid_pre", 0, "resid_pre"),
        ("blocks.4.hook_mlp_out", 4, "mlp_out"),
        ("blocks.4.attn.hook_z", 4, "attn_z"),
        ("hook_embed", None, "embed"),
    ],
)
def test_layer_and_site_come_from_the_hook_name(tmp_path, hook, layer, site):
    _write(tmp_path / "ckpt", _cfg("standard", hook=hook), _tensors("standard"))
    sae = _load_via_spec(tmp_path, path="ckpt", tokens="patch")
    assert (sae.layer, sae.site, sae.tokens) == (layer, site, "patch")


def test_spec_values_that_contradict_the_checkpoint_are_errors_naming_both(tmp_path):
    _write(tmp_path / "ckpt", _cfg("topk", hook="blocks.9.hook_resid_pre"), _tensors("topk"))
    message = r"layer 9 but .*ckpt was trained on layer 8 \(it reads blocks\.9\.hook_resid_pre\)"
    with pytest.raises(SAEConfigError, match=message):
        _load_via_spec(tmp_path, path="ckpt", tokens="patch", layer=9)
    with pytest.raises(SAEConfigError, match=r"site 'mlp_out' but .* site 'resid_post'"):
        _load_via_spec(tmp_path, path="ckpt", tokens="patch", site="mlp_out")
    with pytest.raises(SAEConfigError, match=r"k = 7 but .*ckpt records k = 5"):
        _load_via_spec(tmp_path, path="ckpt", tokens="patch", k=7)
    with pytest.raises(SAEConfigError, match=r"subtract_decoder_bias = False but .* subtract_decoder_bias = True"):
        _load_via_spec(tmp_path, path="ckpt", tokens="patch", subtract_decoder_bias=False)
    with pytest.raises(SAEConfigError, match=r"architecture = 'relu' but .* records architecture = 'topk'"):
        _load_via_spec(tmp_path, path="ckpt", tokens="patch", architecture="relu")
    with pytest.raises(SAEConfigError, match=r"does not record which tokens .*set tokens"):
        _load_via_spec(tmp_path, path="ckpt")
    with pytest.raises(SAEConfigError, match=r"input_mean does not apply to .*saelens checkpoint"):
        _load_via_spec(tmp_path, path="ckpt", tokens="patch", input_mean=0)
    assert _load_via_spec(tmp_path, path="ckpt", tokens="patch", layer=8, k=5).layer == 8


def test_pre_6_config_is_read_the_way_saelens_reads_it(tmp_path):
    """SAELens 5 wrote the hook at top level and TopK as activation_fn_str "topk" of a standard SAE."""
    cfg = {
        "architecture": "standard",
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cpu",
        "hook_name": "blocks.3.hook_resid_post",
        "hook_layer": 3,
        "hook_head_index": None,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": K},
        "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False,
        "normalize_activations": False,
        "sae_lens_training_version": "5.9.1",
    }
    tensors = {**_tensors("topk"), "scaling_factor": torch.ones(D_SAE)}  # SAELens drops an all-ones factor
    _write(tmp_path / "old", cfg, tensors)
    sae = _load_via_spec(tmp_path, path="old", tokens="cls")
    assert (sae.architecture, sae.k, sae.layer, sae.site, sae.tokens) == ("topk", K, 3, "resid_post", "cls")
    h = _inputs()
    modern = _cfg("topk", normalize_activations="none")
    np.testing.assert_allclose(_encode(sae, h), _saelens_latents(modern, _tensors("topk"), h), rtol=0, atol=TOLERANCE)


# -- paths -------------------------------------------------------------------------------------------------------


def test_the_weights_file_and_the_named_format_load_the_same_sae(tmp_path):
    _write(tmp_path / "ckpt", _cfg("jumprelu"), _tensors("jumprelu"))
    h = torch.from_numpy(_inputs())
    folder = _load_via_spec(tmp_path, path="ckpt", tokens="all")
    weights = _load_via_spec(tmp_path, path="ckpt/sae_weights.safetensors", tokens="all")
    named = _load_via_spec(tmp_path, path="ckpt", tokens="all", format="saelens")
    assert torch.equal(folder.encode(h.float()), weights.encode(h.float()))
    assert torch.equal(folder.encode(h.float()), named.encode(h.float()))
    assert folder.extra["source"]["format"] == "saelens"


# -- refusals ------------------------------------------------------------------------------------------------------


def test_damaged_or_mismatched_checkpoints_are_refused_naming_the_file(tmp_path):
    registry = PluginHost(strict=True).registry("sae").get("file")

    def build(folder):
        return registry.build({"path": str(folder), "tokens": "patch"})

    folder = _write(tmp_path / "truncated", _cfg("standard"), _tensors("standard"))
    weights = folder / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-40])
    with pytest.raises(SAEFileError, match=r"truncated/sae_weights\.safetensors as a safetensors file"):
        build(folder)

    bad = _tensors("standard")
    bad["W_enc"][3, 4] = float("nan")
    with pytest.raises(SAEFileError, match=r"'W_e' of .*nan.* holds 1 NaN or infinite"):
        build(_write(tmp_path / "nan", _cfg("standard"), bad))

    extra = {**_tensors("jumprelu"), "log_threshold": torch.zeros(D_SAE)}
    with pytest.raises(SAEFileError, match=r"unknown.*'log_threshold' that a SAELens jumprelu SAE does not have"):
        build(_write(tmp_path / "unknown", _cfg("jumprelu"), extra))

    with pytest.raises(SAEFileError, match=r"'W_enc' has shape \[16, 48\] but .* needs \[16, 40\]"):
        build(_write(tmp_path / "shape", _cfg("standard", d_sae=40), _tensors("standard")))

    with pytest.raises(SAEFileError, match=r"architecture 'batchtopk', a training checkpoint"):
        build(_write(tmp_path / "training", _cfg("batchtopk"), _tensors("jumprelu")))

    (tmp_path / "nocfg").mkdir()
    save_file(_tensors("standard"), str(tmp_path / "nocfg" / "sae_weights.safetensors"))
    with pytest.raises(SAEFileError, match=r"nocfg holds no SAE checkpoint cafe recognises .*cfg\.json"):
        build(tmp_path / "nocfg")


def test_cafe_validate_reports_a_damaged_checkpoint_before_running(tmp_path, capsys):
    folder = _write(tmp_path / "ckpt", _cfg("standard"), _tensors("standard"))
    weights = folder / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-40])
    spec = tmp_path / "spec.toml"
    spec.write_text(
        '[backbone]\nname = "toy_vit"\n\n[sae]\nname = "file"\npath = "ckpt"\ntokens = "patch"\n\n'
        '[dataset]\nname = "shapes"\nsize = 2\n\n[targets]\nlatents = [0]\n\n[[attributors]]\nname = "random"\n'
    )
    assert main(["validate", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "sae:" in err and "sae_weights.safetensors" in err and "damaged, truncated" in err


# -- conversion ----------------------------------------------------------------------------------------------------


def test_convert_writes_a_cafe_checkpoint_with_the_same_latents(tmp_path, capsys):
    cfg = _cfg("topk", rescale_acts_by_decoder_norm=True, normalize_activations="layer_norm",
               hook="blocks.5.hook_resid_post")
    tensors = _tensors("topk", decoder_scale=(0.2, 3.0))
    _write(tmp_path / "ckpt", cfg, tensors)
    out = tmp_path / "converted.safetensors"
    assert main(["sae", "convert", str(tmp_path / "ckpt"), str(out), "--tokens", "patch"]) == 0
    assert "wrote" in capsys.readouterr().out
    converted = load(out)
    assert (converted.layer, converted.site, converted.tokens, converted.normalization) == (
        5, "resid_post", "patch", "layer_norm")
    assert converted.extra["source"]["format"] == "saelens"
    h = _inputs()
    np.testing.assert_allclose(_encode(converted, h), _saelens_latents(cfg, tensors, h), rtol=0, atol=TOLERANCE)
    assert main(["sae", "convert", str(tmp_path / "ckpt"), str(tmp_path / "x.safetensors")]) == 1
    assert "does not record which tokens" in capsys.readouterr().err
