"""Every ViT attributor and metric, end to end, on tiny models of every family SAEs are trained on."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")
pytest.importorskip("transformers")

from safetensors.torch import save_file  # noqa: E402

import cafe_core  # noqa: E402
from cafe_core.errors import SpecError  # noqa: E402
from cafe_core.plan import prepare  # noqa: E402
from cafe_core.plugins import PluginHost  # noqa: E402
from cafe_core.spec import load_spec  # noqa: E402
from cafe_timm.tiny import save_hf, save_open_clip  # noqa: E402

pytestmark = pytest.mark.slow

ATTRIBUTORS = [
    {"name": "activation_map"}, {"name": "gradient_x_input"}, {"name": "attnlrp"}, {"name": "cp_lrp"},
    {"name": "integrated_gradients", "n_steps": 4}, {"name": "saliency"}, {"name": "input_x_gradient"},
    {"name": "gradient_shap", "n_samples": 2}, {"name": "occlusion"}, {"name": "random"},
]
METRICS = [
    {"name": "insertion", "steps": 4}, {"name": "deletion", "steps": 4}, {"name": "own_patch_share"},
    {"name": "cause_patches"}, {"name": "nonlocal_mass"}, {"name": "relevance_distance"},
    {"name": "activation_agreement"}, {"name": "symmetric_relevance_gain", "steps": 4}, {"name": "object_hit"},
]
# family -> (backbone section, the prefix token a second target rule reads)
FAMILIES = {
    "open_clip": ({"name": "open_clip"}, "cls"),
    "hf_clip": ({"name": "hf_vision"}, "cls"),
    "hf_dinov2": ({"name": "hf_vision", "img_size": 48}, "cls"),
    "hf_dinov2_registers": ({"name": "hf_vision", "img_size": 48}, "reg1"),
    "hf_siglip": ({"name": "hf_vision", "pool_token": True}, "pool"),
    "hf_vit": ({"name": "hf_vision", "final_norm": "all"}, "cls"),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("family_models")
    paths = {"open_clip": save_open_clip(root / "open_clip", "openai")}
    for family in FAMILIES:
        if family.startswith("hf_"):
            paths[family] = save_hf(root / family, family[len("hf_"):])
    return paths


def _backbone(models, family):
    section, _ = FAMILIES[family]
    return {**section, "path": models[family]}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_attributor_and_metric_runs_on_the_family(models, family, tmp_path):
    _, prefix = FAMILIES[family]
    spec = {
        "backbone": _backbone(models, family),
        "sae": {"name": "random", "d_in": 32, "d_sae": 64, "layer": 1, "tokens": "all"},
        "dataset": {"name": "shapes", "size": 1, "seed": 3},
        "targets": [{"select": "top", "count": 1, "token": "argmax"}, {"select": "top", "count": 1, "token": prefix}],
        "attributors": ATTRIBUTORS,
        "metrics": METRICS,
        "run": {"batch_size": 4, "device": "cpu"},
    }
    results = cafe_core.run(spec, tmp_path / "run")
    names = [a["name"] for a in ATTRIBUTORS]
    assert {r["position_name"] for r in results.rows} >= {prefix}
    assert {(r["attributor"], r["metric"]) for r in results.rows} == {
        (a, m["name"]) for a in names for m in METRICS
    }
    scored = [r for r in results.rows if r["metric"] == "insertion"]
    assert all(r["score"] == r["score"] for r in scored)  # no NaN


def _saelens_folder(folder, hook: str, d_in: int = 32, d_sae: int = 64) -> None:
    """An SAE as SAELens saves it (``cfg.json`` + ``sae_weights.safetensors``), trained at ``hook``."""
    g = torch.Generator().manual_seed(0)
    folder.mkdir(parents=True)
    save_file({
        "W_enc": torch.randn(d_in, d_sae, generator=g) * 0.3, "b_enc": torch.randn(d_sae, generator=g) * 0.1,
        "W_dec": torch.randn(d_sae, d_in, generator=g) * 0.3, "b_dec": torch.randn(d_in, generator=g) * 0.1,
    }, str(folder / "sae_weights.safetensors"))
    cfg = {"d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "architecture": "standard",
           "metadata": {"model_name": "open-clip:laion/CLIP-ViT-B-16", "hook_name": hook}}
    (folder / "cfg.json").write_text(json.dumps(cfg))


def test_the_readme_recipe_an_open_clip_vit_with_a_saelens_sae(models, tmp_path):
    """The README's CLIP spec, with a tiny open_clip model and an SAE in SAELens' format at blocks.1."""
    _saelens_folder(tmp_path / "sae", "blocks.1.hook_resid_post")
    spec = {
        "backbone": {"name": "open_clip", "path": models["open_clip"]},
        "sae": {"name": "file", "path": str(tmp_path / "sae"), "tokens": "patch"},
        "dataset": {"name": "shapes", "size": 2},
        "targets": {"select": "top", "count": 2, "token": "argmax"},
        "attributors": [{"name": "activation_map"}, {"name": "attnlrp"}, {"name": "cp_lrp"}],
        "metrics": [{"name": "insertion", "steps": 4}, {"name": "deletion", "steps": 4}],
        "run": {"batch_size": 4, "device": "cpu"},
    }
    results = cafe_core.run(spec, tmp_path / "run")
    assert {r["layer"] for r in results.rows} == {1}  # from the hook name, not from the spec
    assert len(results.rows) == 2 * 2 * 3 * 2


def test_validate_refuses_lrp_on_a_family_variant_without_rules_naming_the_module(tmp_path):
    folder = save_hf(tmp_path / "dinov2_swiglu", "dinov2", use_swiglu_ffn=True)
    spec, base_dir = load_spec({
        "backbone": {"name": "hf_vision", "path": folder, "img_size": 48},
        "sae": {"name": "random", "d_in": 32, "d_sae": 64, "layer": 1},
        "dataset": {"name": "shapes", "size": 1},
        "targets": {"select": "top", "count": 1},
        "attributors": [{"name": "gradient_x_input"}, {"name": "cp_lrp"}],
        "metrics": [{"name": "insertion"}],
    })
    with pytest.raises(SpecError) as raised:
        prepare(spec, PluginHost(), base_dir)
    ((path, message),) = raised.value.problems
    assert path == "attributors[1]" and "blocks.0.mlp (GluMlp)" in message
