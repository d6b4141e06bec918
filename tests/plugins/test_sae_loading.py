"""What every checkpoint format shares: finding the format from a path, the params and their one validation, the
deprecated ``site`` param, and the ``sae`` command's registration."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from cafe_core.plugins import PluginHost
from cafe_sae import GatedSAE, ReluSAE, SAEConfigError, SAEFileError, TopKSAE, load_any, save


@pytest.fixture(scope="module")
def registry():
    return PluginHost(strict=True).registry("sae")


def _cafe_file(path, sae=None):
    return save(sae or ReluSAE.random_init(4, 8, layer=1, tokens="patch"), path)


def test_old_site_param_is_read_as_tokens_with_a_deprecation_warning(tmp_path, registry):
    path = _cafe_file(tmp_path / "sae.safetensors")
    for name in ("file", "relu"):
        with pytest.warns(DeprecationWarning, match='now `tokens`.*write `tokens = "patch"`'):
            params = registry.get(name).validate({"path": str(path), "site": "patch"})
        assert (params.tokens, params.site) == ("patch", None)
        assert registry.get(name).build(params).tokens == "patch"
    with pytest.warns(DeprecationWarning), pytest.raises(ValidationError, match="contradicts tokens = 'cls'"):
        registry.get("file").validate({"path": str(path), "site": "patch", "tokens": "cls"})
    assert registry.get("file").validate({"path": str(path), "site": "resid_post"}).site == "resid_post"


def test_params_are_validated_before_anything_is_read(tmp_path, registry):
    path = str(_cafe_file(tmp_path / "sae.safetensors"))
    file = registry.get("file")
    for bad, message in [
        ({"tokens": "patches"}, "tokens"),
        ({"format": "sae_lens"}, "format"),
        ({"architecture": "batchtopk"}, "architecture"),
        ({"k": 0}, "k"),
        ({"input_scalar": 0}, "input_scalar"),
        ({"input_mean": "mean.npy"}, "input_mean file .*mean.npy does not exist"),
        ({"site": "blocks.9 hook"}, "site"),
    ]:
        with pytest.raises(ValidationError, match=message):
            file.validate({"path": path, **bad})
    with pytest.raises(ValidationError, match="k"):
        registry.get("relu").validate({"path": path, "k": 3})  # the relu SAE has no k
    assert registry.get("topk").validate({"path": path, "k": 3}).k == 3


def test_folder_with_one_cafe_checkpoint_is_detected(tmp_path, registry):
    _cafe_file(tmp_path / "run" / "sae.safetensors")
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    assert isinstance(registry.get("file").build({"path": str(tmp_path / "run")}), ReluSAE)
    _cafe_file(tmp_path / "run" / "other.safetensors")
    with pytest.raises(SAEFileError, match=r"run holds no SAE checkpoint cafe recognises .*give the checkpoint file"):
        registry.get("file").build({"path": str(tmp_path / "run")})


def test_a_named_format_that_does_not_fit_is_reported(tmp_path, registry):
    path = _cafe_file(tmp_path / "sae.safetensors")
    with pytest.raises(SAEFileError, match=r"sae\.safetensors does not start with saev's JSON header"):
        registry.get("file").build({"path": str(path), "format": "saev", "tokens": "all"})
    with pytest.raises(SAEFileError, match=r"cfg\.json is missing beside the weights"):
        registry.get("file").build({"path": str(path), "format": "saelens", "tokens": "all"})


def test_plain_state_dicts_need_their_architecture(tmp_path, registry):
    sae = TopKSAE.random_init(4, 8, k=2)
    save_file({name: getattr(sae, name).detach() for name in sae.tensor_names}, str(tmp_path / "plain.safetensors"))
    path = str(tmp_path / "plain.safetensors")
    with pytest.raises(SAEConfigError, match=r"state_dict checkpoint, which does not record architecture"):
        registry.get("file").build({"path": path, "tokens": "all"})
    loaded = registry.get("file").build({"path": path, "tokens": "all", "architecture": "topk", "k": 2})
    h = torch.randn(5, 4)
    torch.testing.assert_close(loaded.encode(h), sae.encode(h))
    with pytest.raises(SAEFileError, match=r"architecture = 'gated', but plain state dicts are read as relu or topk"):
        registry.get("file").build({"path": path, "tokens": "all", "architecture": "gated"})


def test_the_relu_and_topk_names_refuse_other_architectures(tmp_path, registry):
    path = save(GatedSAE(4, 8, tokens="cls"), tmp_path / "gated.safetensors")
    with pytest.raises(SAEConfigError, match=r"holds a gated SAE, not a relu one; use SAE 'file'"):
        registry.get("relu").build({"path": str(path)})
    assert isinstance(registry.get("file").build({"path": str(path)}), GatedSAE)


def test_load_any_validates_its_params_like_a_spec(tmp_path):
    path = _cafe_file(tmp_path / "sae.safetensors")
    sae = load_any(path, layer=1)
    assert not any(p.requires_grad for p in sae.parameters())
    with pytest.raises(ValidationError, match="tokens"):
        load_any(path, tokens="everything")


def test_the_sae_command_is_registered_lazily(tmp_path):
    registration = PluginHost(strict=True).registry("command").get("sae")
    assert (registration.plugin, registration.factory) == ("sae", "cafe_sae.convert:SAECommand")
    from cafe_core.cli import main

    assert main(["sae", "convert", str(tmp_path / "missing"), str(tmp_path / "out.safetensors")]) == 1


def test_converted_checkpoint_records_its_source(tmp_path):
    from cafe_sae.convert import convert

    path = _cafe_file(tmp_path / "a.safetensors")
    out = convert(path, tmp_path / "b.safetensors", layer=1)
    header_len = int.from_bytes(out.read_bytes()[:8], "little")
    config = json.loads(json.loads(out.read_bytes()[8 : 8 + header_len])["__metadata__"]["cafe_sae"])
    assert (config["format_version"], config["tokens"], config["layer"]) == (2, "patch", 1)


def test_a_run_uses_a_foreign_checkpoint_given_by_path_alone(tmp_path):
    """A SAELens folder on the default ViT's block 3: the run reads its layer from the hook name."""
    import cafe_core

    g = torch.Generator().manual_seed(0)
    width, latents = 128, 32
    folder = tmp_path / "blocks.3.hook_resid_post"
    folder.mkdir()
    save_file({"W_enc": torch.randn(width, latents, generator=g) * 0.1, "b_enc": torch.randn(latents, generator=g),
               "W_dec": torch.randn(latents, width, generator=g), "b_dec": torch.randn(width, generator=g)},
              str(folder / "sae_weights.safetensors"))
    cfg = {"d_in": width, "d_sae": latents, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "layer_norm", "reshape_activations": "none", "architecture": "standard",
           "metadata": {"sae_lens_version": "6.12.1", "hook_name": "blocks.3.hook_resid_post"}}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    spec = {
        "backbone": {"name": "toy_vit"},
        "sae": {"name": "file", "path": str(folder), "tokens": "patch"},
        "dataset": {"name": "shapes", "size": 1, "seed": 4},
        "targets": {"select": "top", "count": 1},
        "attributors": [{"name": "activation_map"}],
        "metrics": [{"name": "insertion", "steps": 2}],
        "run": {"batch_size": 4, "device": "cpu"},
    }
    results = cafe_core.run(spec, tmp_path / "run")
    assert results.rows and {row["layer"] for row in results.rows} == {3}
