"""ViT-Prisma checkpoints (``config.json`` + a ``.pt`` of ``{"cfg": <pickled config>, "state_dict": ...}``) load
by path, give Prisma's latents, and are read without unpickling the config object.

The files are written here as Prisma's ``save_model`` and ``save_config`` write them; the config object is an
instance of a stand-in class registered under Prisma's module name only while saving, so loading cannot import it.
"""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch

from cafe_core.cli import main
from cafe_core.plugins import PluginHost
from cafe_core.resolve import resolve
from cafe_core.spec import load_spec
from cafe_sae import SAEConfigError, SAEFileError, load

D_IN, EXPANSION, K, ROWS = 16, 3, 5, 40
D_SAE = D_IN * EXPANSION
TOLERANCE = 1e-9


def _config(architecture="standard", activation="relu", *, old=True, **fields):
    """``config.json`` as ``VisionModelSAERunnerConfig.save_config`` writes it (``old``: the 2024 releases, which
    serialise dtype and device as tagged objects; newer ones store ``_dtype`` and ``_device`` strings)."""
    config = {
        "model_class_name": "HookedViT",
        "model_name": "open-clip:laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K",
        "vit_model_cfg": None,
        "model_path": None,
        "hook_point_layer": 9,
        "layer_subtype": "hook_resid_post",
        "hook_point_head_index": None,
        "context_size": 50,
        "use_cached_activations": False,
        "use_patches_only": False,
        "cached_activations_path": "activations/imagenet/clip/blocks.9.hook_resid_post",
        "image_size": 224,
        "architecture": architecture,
        "b_dec_init_method": "geometric_median",
        "expansion_factor": EXPANSION,
        "from_pretrained_path": None,
        "d_in": D_IN,
        "activation_fn_str": activation,
        "activation_fn_kwargs": {"k": K} if activation == "topk" else {},
        "cls_token_only": False,
        "max_grad_norm": 1.0,
        "initialization_method": "independent",
        "normalize_activations": "layer_norm",
        "l1_coefficient": 1e-05,
        "lp_norm": 1,
        "lr": 0.001,
        "train_batch_size": 4096,
        "use_ghost_grads": False,
        "seed": 42,
    }
    if old:
        config.update(d_sae=D_SAE, dtype={"__type__": "torch.dtype", "value": "torch.float32"},
                      device={"__type__": "torch.device", "value": "cpu"})
    else:
        config.update(_dtype="float32", _device="cpu", is_transcoder=False)
    config.update(fields)
    return config


def _state(architecture="standard", seed=0):
    """Prisma's parameters, in its modules' order: W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec; gated
    SAEs add b_gate, r_mag, b_mag (and keep an unused b_enc)."""
    g = torch.Generator().manual_seed(seed)
    if architecture == "gated":
        return {
            "W_enc": torch.randn(D_IN, D_SAE, generator=g) * 0.5,
            "b_gate": torch.randn(D_SAE, generator=g),
            "r_mag": torch.randn(D_SAE, generator=g) * 0.3,
            "b_mag": torch.randn(D_SAE, generator=g),
            "W_dec": torch.randn(D_SAE, D_IN, generator=g),
            "b_enc": torch.randn(D_SAE, generator=g),
            "b_dec": torch.randn(D_IN, generator=g) + 1.0,
        }
    return {
        "W_dec": torch.randn(D_SAE, D_IN, generator=g),
        "W_enc": torch.randn(D_IN, D_SAE, generator=g) * 0.5,
        "b_enc": torch.randn(D_SAE, generator=g) * 0.5,
        "b_dec": torch.randn(D_IN, generator=g) + 1.0,
    }


def _leave_a_mark(path):
    """What a malicious pickle would run; the loader must never call it."""
    with open(path, "w") as handle:
        handle.write("unpickled")
    return {}


def _write(folder, config, state, *, marker=None, legacy=True, name="n_images_2600058.pt"):
    """``save_model``: torch.save({"cfg": <config object>, "state_dict": ...}) beside ``config.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=4))
    if not legacy:
        torch.save(state, folder / name)
        return folder
    module = types.ModuleType("vit_prisma.sae.config")

    class VisionModelSAERunnerConfig:
        def __reduce__(self):
            if marker is not None:
                return (_leave_a_mark, (str(marker),))
            return object.__reduce__(self)

    VisionModelSAERunnerConfig.__module__ = module.__name__
    VisionModelSAERunnerConfig.__qualname__ = "VisionModelSAERunnerConfig"
    module.VisionModelSAERunnerConfig = VisionModelSAERunnerConfig
    cfg = VisionModelSAERunnerConfig()
    cfg.__dict__.update({"d_in": D_IN, "dtype": torch.float32, "device": torch.device("cpu"), "hook_point_layer": 9})
    names = ("vit_prisma", "vit_prisma.sae", module.__name__)
    assert not any(name in sys.modules for name in names)
    sys.modules.update({name: types.ModuleType(name) for name in names[:2]})
    sys.modules[module.__name__] = module
    try:
        torch.save({"cfg": cfg, "state_dict": state}, folder / name)
    finally:
        for name in names:
            del sys.modules[name]
    return folder


def _prisma_latents(config, state, h):
    """Prisma's encoder: x = norm(h) - b_dec; standard: act(x W_enc + b_enc); gated: gate * ReLU(magnitude)."""
    w = {name: t.double().numpy() for name, t in state.items()}
    x = h.astype(np.float64)
    if config.get("normalize_activations", "layer_norm") == "layer_norm":
        x = x - x.mean(axis=-1, keepdims=True)
        x = x / (x.std(axis=-1, ddof=1, keepdims=True) + 1e-5)
    x = x - w["b_dec"]
    if config["architecture"] == "gated":
        fires = (x @ w["W_enc"] + w["b_gate"]) > 0
        return fires * np.maximum(x @ (w["W_enc"] * np.exp(w["r_mag"])) + w["b_mag"], 0)
    pre = x @ w["W_enc"] + w["b_enc"]
    if config["activation_fn_str"] == "relu":
        return np.maximum(pre, 0)
    out = np.zeros_like(pre)
    for i, row in enumerate(pre):
        keep = np.argsort(-row)[: config["activation_fn_kwargs"]["k"]]
        out[i, keep] = np.maximum(row[keep], 0)
    return out


def _inputs(seed=1):
    return np.random.default_rng(seed).normal(size=(ROWS, D_IN)) * 1.5 + 2.5


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
    "relu, layer norm (Prisma's default)": ("standard", "relu", {}),
    "relu, no normalisation": ("standard", "relu", {"normalize_activations": "none"}),
    "topk": ("standard", "topk", {}),
    "gated": ("gated", "relu", {}),
}


@pytest.mark.parametrize("old", [True, False], ids=["2024 config", "2025 config"])
@pytest.mark.parametrize("case", list(CASES))
def test_latents_equal_prisma_formula(tmp_path, case, old):
    architecture, activation, fields = CASES[case]
    config = _config(architecture, activation, old=old, **fields)
    state = _state(architecture)
    _write(tmp_path / "sae", config, state)
    sae = _load_via_spec(tmp_path, path="sae")
    assert (sae.layer, sae.site, sae.tokens) == (9, "resid_post", "all")
    h = _inputs()
    expected = _prisma_latents(config, state, h)
    np.testing.assert_allclose(_encode(sae, h), expected, rtol=0, atol=TOLERANCE)
    assert (expected > 0).any() and (expected == 0).any()
    without_b_dec = _prisma_latents(config, {**state, "b_dec": torch.zeros(D_IN)}, h)
    assert np.abs(without_b_dec - expected).max() > 1e-2
    if config["normalize_activations"] == "layer_norm":
        unnormalised = _prisma_latents({**config, "normalize_activations": "none"}, state, h)
        assert np.abs(unnormalised - expected).max() > 1e-2
    rows = torch.arange(ROWS) % D_SAE
    picked = sae.encode_latents(torch.from_numpy(h), rows).detach().numpy()
    np.testing.assert_allclose(picked, expected[np.arange(ROWS), rows.numpy()], rtol=0, atol=TOLERANCE)


def test_config_without_normalize_activations_means_prisma_default_layer_norm(tmp_path):
    config = _config()
    del config["normalize_activations"]
    state = _state()
    _write(tmp_path / "sae", config, state, legacy=False, name="weights.pt")
    sae = _load_via_spec(tmp_path, path="sae/weights.pt")
    assert sae.normalization == "layer_norm"
    np.testing.assert_allclose(_encode(sae, _inputs()), _prisma_latents(_config(), state, _inputs()), atol=TOLERANCE)


def test_the_pickled_config_object_is_never_unpickled(tmp_path):
    marker = tmp_path / "marker"
    _write(tmp_path / "sae", _config(), _state(), marker=marker)
    assert "vit_prisma.sae.config" not in sys.modules
    with pytest.raises(pickle_error()):  # plain torch.load would run the object's code
        torch.load(next((tmp_path / "sae").glob("*.pt")), weights_only=True)
    sae = _load_via_spec(tmp_path, path="sae")
    assert not marker.exists()
    np.testing.assert_allclose(_encode(sae, _inputs()), _prisma_latents(_config(), _state(), _inputs()), atol=TOLERANCE)


def pickle_error():
    import pickle

    return pickle.UnpicklingError


@pytest.mark.parametrize(
    "fields, tokens",
    [({"cls_token_only": True}, "cls"), ({"use_patches_only": True}, "patch"), ({}, "all")],
)
def test_tokens_come_from_the_config(tmp_path, fields, tokens):
    _write(tmp_path / "sae", _config(**fields), _state())
    assert _load_via_spec(tmp_path, path="sae").tokens == tokens


def test_spec_values_that_contradict_the_config_are_errors_naming_both(tmp_path):
    _write(tmp_path / "sae", _config(cls_token_only=True, layer_subtype="hook_mlp_out", hook_point_layer=4), _state())
    with pytest.raises(SAEConfigError, match=r"tokens 'patch' but .*sae was trained on tokens 'cls'"):
        _load_via_spec(tmp_path, path="sae", tokens="patch")
    with pytest.raises(SAEConfigError, match=r"layer 9 but .* trained on layer 4 \(it reads blocks\.4\.hook_mlp_out\)"):
        _load_via_spec(tmp_path, path="sae", layer=9)
    sae = _load_via_spec(tmp_path, path="sae", layer=4, tokens="cls")
    assert (sae.layer, sae.site) == (4, "mlp_out")  # loads; a run refuses a site its backbone does not provide
    with pytest.raises(SAEConfigError, match=r"subtract_decoder_bias = False but .* records subtract_decoder_bias"):
        _load_via_spec(tmp_path, path="sae", subtract_decoder_bias=False)


def test_unsupported_or_damaged_prisma_checkpoints_are_refused(tmp_path):
    _write(tmp_path / "a", _config("gated", "topk"), _state("gated"))
    with pytest.raises(SAEFileError, match=r"gated SAE with a TopK magnitude"):
        _load_via_spec(tmp_path, path="a")
    _write(tmp_path / "b", _config(activation="tanh-relu"), _state())
    with pytest.raises(SAEFileError, match=r"activation_fn_str 'tanh-relu'"):
        _load_via_spec(tmp_path, path="b")
    _write(tmp_path / "c", _config(), {**_state(), "W_enc": torch.randn(D_IN, D_SAE + 1)})
    with pytest.raises(SAEFileError, match=r"c \(prisma checkpoint\): tensor 'W_enc' has shape \[16, 49\]"):
        _load_via_spec(tmp_path, path="c")
    _write(tmp_path / "d", _config(), {**_state(), "b_dec_out": torch.zeros(D_IN)})
    with pytest.raises(SAEFileError, match=r"'b_dec_out' that a Prisma standard SAE does not have"):
        _load_via_spec(tmp_path, path="d")
    folder = _write(tmp_path / "e", _config(), _state())
    weights = next(folder.glob("*.pt"))
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(SAEFileError, match=r"n_images_2600058\.pt .*damaged or truncated"):
        _load_via_spec(tmp_path, path="e")


def test_convert_writes_a_cafe_checkpoint_with_the_same_latents(tmp_path):
    config = _config("gated", hook_point_layer=2, cls_token_only=True)
    state = _state("gated")
    _write(tmp_path / "sae", config, state)
    out = tmp_path / "cafe.safetensors"
    assert main(["sae", "convert", str(tmp_path / "sae"), str(out)]) == 0
    converted = load(out)
    assert (converted.architecture, converted.layer, converted.tokens) == ("gated", 2, "cls")
    np.testing.assert_allclose(_encode(converted, _inputs()), _prisma_latents(config, state, _inputs()), atol=TOLERANCE)
