"""The [interlayer] table: read beside the core's spec, checked with paths, SAEs and methods chosen from it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cafe_core.errors import SpecError
from cafe_core.spec import ComponentSpec
from cafe_interlayer.errors import InterlayerError
from cafe_interlayer.methods import IntegratedGradients, InterlayerCPLRP
from cafe_interlayer.section import (
    InterlayerSection,
    choose_levels,
    choose_methods,
    read_interlayer_spec,
)

SPEC = """
[backbone]
name = "toy_vit"

[[sae]]
name = "toy_sae"
layer = 0

[dataset]
name = "shapes"

[[targets]]
select = "top"
count = 1

[[attributors]]
name = "cp_lrp"

[interlayer]
source = [0]
points = 11
"""


def test_the_table_is_read_with_the_spec_and_checked_at_its_paths(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(SPEC)
    spec, base_dir, section = read_interlayer_spec(path)
    assert spec.backbone == ComponentSpec(name="toy_vit") and "interlayer" not in spec.canonical()
    assert base_dir == tmp_path.resolve()
    assert section.source == [0] and section.points == 11 and section.error == "keep"
    path.write_text(SPEC.replace("points = 11", "points = 1\nshares = 0.5\nattributors = [\"ig\"]"))
    with pytest.raises(SpecError) as caught:
        read_interlayer_spec(path)
    paths = [p for p, _ in caught.value.problems]
    assert {"interlayer.points", "interlayer.shares", "interlayer.attributors"} <= set(paths)
    assert "integrated_gradients" in str(caught.value)


def test_a_spec_without_the_table_gets_the_defaults(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(SPEC[: SPEC.index("[interlayer]")])
    spec, _, section = read_interlayer_spec(path)
    assert section == InterlayerSection() and spec.tables == {}


def _plan(*saes):
    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList([torch.nn.Identity() for _ in range(4)])
    backbone = SimpleNamespace(model=model, prefix_tokens=("cls",), grid_size=(2, 2))
    objects = [SimpleNamespace(layer=layer, tokens=tokens) for _, layer, tokens in saes]
    return SimpleNamespace(backbone=backbone, saes=objects, sae_labels=[label for label, _, _ in saes])


TOY = [("layer0", 0, "patch"), ("layer2", 2, "patch"), ("layer3", 3, "patch"), ("cls3", 3, "cls")]


def test_by_default_the_top_patch_sae_is_explained_by_every_patch_sae_below():
    target, sources = choose_levels(_plan(*TOY), InterlayerSection())
    assert target.label == "layer3"
    assert [s.label for s in sources] == ["layer2", "layer0"]


def test_saes_are_named_by_label_or_layer():
    plan = _plan(*TOY)
    target, sources = choose_levels(plan, InterlayerSection(target="cls3", source=[0]))
    assert (target.label, [s.label for s in sources]) == ("cls3", ["layer0"])
    target, _ = choose_levels(plan, InterlayerSection(target=3, source=2))
    assert target.label == "layer3"  # layer 3 holds two SAEs: the patch one unless named


@pytest.mark.parametrize("section, message", [
    (InterlayerSection(target="layer9"), "not an SAE of the spec"),
    (InterlayerSection(target="layer2", source=["layer3"]), "is not before the target"),
    (InterlayerSection(target="layer0"), "no source SAE below"),
])
def test_wrong_saes_are_refused_with_the_fix(section, message):
    with pytest.raises(InterlayerError, match=message):
        choose_levels(_plan(*TOY), section)


def _resolved(name, **params):
    spec = ComponentSpec(name=name, **params)
    return SimpleNamespace(registration=SimpleNamespace(name=name), spec=spec)


def test_the_spec_attributors_counterparts_are_used_with_their_params():
    plan = SimpleNamespace(resolved={"attributors": [
        _resolved("integrated_gradients", n_steps=8, method="gausslegendre"), _resolved("occlusion"),
        _resolved("cp_lrp", gamma=0.25)]})
    methods = choose_methods(plan, InterlayerSection())
    assert list(methods) == ["integrated_gradients", "cp_lrp"]
    assert isinstance(methods["integrated_gradients"], IntegratedGradients)
    assert methods["integrated_gradients"].n_steps == 8
    assert isinstance(methods["cp_lrp"], InterlayerCPLRP) and methods["cp_lrp"].gamma == 0.25
    named = choose_methods(plan, InterlayerSection(attributors=["random", {"name": "integrated_gradients",
                                                                          "label": "ig4", "n_steps": 4}]))
    assert list(named) == ["random", "ig4"] and named["ig4"].n_steps == 4
    with pytest.raises(InterlayerError, match="counterpart"):
        choose_methods(SimpleNamespace(resolved={"attributors": [_resolved("occlusion")]}), InterlayerSection())
