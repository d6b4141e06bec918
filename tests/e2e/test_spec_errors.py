"""Spec problems are all reported at once, each with its path in the spec and a way to fix it."""

import pytest

from cafe_core.errors import SpecError
from cafe_core.plugins import PluginHost
from cafe_core.resolve import resolve
from cafe_core.spec import load_spec

TOML = """
[backbone]
name = "timm"
model = "vit_tiny_patch16_224"
checkpoint = "weights/vit.safetensors"
img_size = 32

[sae]
name = "relu"
path = "sae.safetensors"

[dataset]
name = "folder"
path = "images"

[targets]
select = "top"
count = 4

[[attributors]]
name = "gradient_x_input"

[[attributors]]
name = "integrated_gradient"

[[metrics]]
name = "insertion"
steps = "x"

[run]
batch_size = 0
"""


def problems_of(source, host=None, base_dir=None):
    with pytest.raises(SpecError) as info:
        spec, spec_dir = load_spec(source)
        resolve(spec, host or PluginHost(), base_dir or spec_dir)
    return dict(info.value.problems), str(info.value)


def test_structural_problems_are_listed_together(tmp_path):
    (tmp_path / "spec.toml").write_text(TOML)
    problems, message = problems_of(tmp_path / "spec.toml")
    assert set(problems) == {"run.batch_size"}
    assert "greater than or equal to 1" in problems["run.batch_size"]
    assert message.startswith("1 problem(s) in the run spec:")


def test_names_params_and_missing_files_are_listed_together(tmp_path):
    (tmp_path / "spec.toml").write_text(TOML.replace("batch_size = 0", "batch_size = 4"))
    problems, _ = problems_of(tmp_path / "spec.toml")
    assert set(problems) == {"backbone", "sae.path", "dataset.path", "attributors[1].name", "metrics[0].steps"}
    assert f"checkpoint file '{tmp_path / 'weights' / 'vit.safetensors'}' does not exist" in problems["backbone"]
    assert "unknown attributor 'integrated_gradient'" in problems["attributors[1].name"]
    assert "Available: activation_map, " in problems["attributors[1].name"]
    assert "valid integer" in problems["metrics[0].steps"] and "'x'" in problems["metrics[0].steps"]
    # relative paths are taken from the spec file's folder
    assert str(tmp_path / "sae.safetensors") in problems["sae.path"]
    assert str(tmp_path / "images") in problems["dataset.path"]


def test_a_close_name_gets_a_suggestion():
    spec = {
        "backbone": {"name": "timmm", "model": "x"},
        "sae": {"name": "relu", "path": "nowhere"},
        "dataset": {"name": "folder", "path": "."},
        "targets": {"latents": [1]},
        "attributors": [{"name": "gradient_x_inputs"}],
    }
    problems, _ = problems_of(spec)
    assert "Did you mean 'timm'" in problems["backbone.name"]
    assert "Did you mean 'gradient_x_input'" in problems["attributors[0].name"]


def test_unknown_keys_and_sections_are_rejected():
    spec = {
        "backbone": {"name": "timm", "model": "x", "pretraind": True},
        "sae": {"name": "relu", "path": "nowhere"},
        "dataset": {"name": "folder", "path": "."},
        "targets": {"latents": [1], "postion": "cls"},
        "attributors": [{"name": "gradient_x_input"}],
        "extras": {},
    }
    problems, _ = problems_of(spec)
    assert problems["targets.postion"].startswith("unknown key")
    assert problems["extras"].startswith("unknown key")


def test_targets_need_exactly_one_rule():
    base = {
        "backbone": {"name": "timm", "model": "x"},
        "sae": {"name": "relu", "path": "nowhere"},
        "dataset": {"name": "folder", "path": "."},
        "attributors": [{"name": "gradient_x_input"}],
    }
    problems, _ = problems_of({**base, "targets": {"select": "top"}})
    assert "needs `count`" in problems["targets"]
    problems, _ = problems_of({**base, "targets": {"latents": [1], "select": "top", "count": 2}})
    assert "exactly one of" in problems["targets"]


def test_repeated_method_needs_labels():
    spec = {
        "backbone": {"name": "timm", "model": "x"},
        "sae": {"name": "relu", "path": "nowhere"},
        "dataset": {"name": "folder", "path": "."},
        "targets": {"latents": [1]},
        "attributors": [{"name": "gradient_x_input"}, {"name": "gradient_x_input", "absolute": True}],
    }
    problems, _ = problems_of(spec)
    assert "give each a distinct `label`" in problems[""]
    spec["attributors"][1]["label"] = "gradient_x_input_abs"
    loaded, _ = load_spec(spec)
    assert [a.display_name for a in loaded.attributors] == ["gradient_x_input", "gradient_x_input_abs"]
    assert loaded.attributors[1].params == {"absolute": True}


def test_invalid_toml_and_missing_file(tmp_path):
    (tmp_path / "bad.toml").write_text("[backbone\nname = 1")
    problems, _ = problems_of(tmp_path / "bad.toml")
    assert "is not valid TOML" in problems[""]
    problems, _ = problems_of(tmp_path / "absent.toml")
    assert "does not exist" in problems[""]
