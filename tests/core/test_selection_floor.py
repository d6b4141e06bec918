"""The relative floor of target selection, and the per-heatmap relative errors of the summary, on hand-made values."""

from types import SimpleNamespace

import pytest
import torch

from cafe_core.results import heatmap_diagnostics
from cafe_core.selection import activation_scales, rule_values, select_targets
from cafe_core.spec import DEFAULT_RELATIVE_FLOOR, RunSpec, TargetRule, stored_spec_data

# One prefix token (a class token) and a 2x2 grid of patch tokens.
BACKBONE = SimpleNamespace(prefix_tokens=("cls",), grid_size=(2, 2), patch_size=(4, 4))

# [image, token, latent]: token 0 is the class token.
CODES = torch.tensor(
    [
        [[9.0, 0.0, 0.0], [0.0, 4.0, 0.05], [2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.2]],
        [[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 0.3, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]],
    ]
)
# Each latent's largest value at a patch token, over both images: read off the table above.
PATCH_SCALES = [10.0, 4.0, 1.0]


def _select(codes, floors, select="top", count=3, latents=None, position=None, seed=0):
    return select_targets(
        codes, image_ids=["a", "b"], sae="s", layer=0, backbone=BACKBONE, latents=latents, select=select,
        count=count, position=position, min_activation=0.0, seed=seed, floors=floors,
    )


def test_scales_are_each_latents_largest_value_where_the_rule_reads_it():
    by_batch = None
    for image in range(2):
        by_batch = activation_scales(rule_values(CODES[image : image + 1], None, 1), by_batch)
    assert by_batch.tolist() == PATCH_SCALES
    # At the class token: 9 (image a), 0 and 0.
    assert activation_scales(rule_values(CODES, 0, 1)).tolist() == [9.0, 0.0, 0.0]


def test_targets_below_a_tenth_of_their_scale_are_below_the_floor():
    floors = 0.1 * torch.tensor(PATCH_SCALES, dtype=torch.float64)  # 1.0, 0.4, 0.1
    records = {(r.key.image_id, r.key.latent): r for r in _select(CODES, floors)}
    # Image a, top values at patch tokens: latent 0 -> 2.0, latent 1 -> 4.0, latent 2 -> 0.2.
    # Image b: latent 0 -> 10.0, latent 1 -> 0.3 (< 0.4), latent 2 -> 1.0.
    expected = {
        ("a", 0): "explained", ("a", 1): "explained", ("a", 2): "explained",
        ("b", 0): "explained", ("b", 1): "below_floor", ("b", 2): "explained",
    }
    assert {k: r.status for k, r in records.items()} == expected
    assert records[("b", 1)].activation == pytest.approx(0.3)


def test_the_floor_changes_statuses_never_the_drawn_latents():
    floors = 0.5 * torch.tensor(PATCH_SCALES, dtype=torch.float64)  # 5, 2, 0.5
    for seed in range(5):
        without = _select(CODES, None, select="random", count=2, seed=seed)
        with_floor = _select(CODES, floors, select="random", count=2, seed=seed)
        assert [r.key for r in without] == [r.key for r in with_floor]
        for record in with_floor:
            scale = PATCH_SCALES[record.key.latent]
            assert record.status == ("below_floor" if record.activation < 0.5 * scale else "explained")
        assert all(r.status == "explained" for r in without)


def test_inactive_comes_before_the_floor_for_explicit_latents():
    floors = torch.tensor([0.5, 0.5], dtype=torch.float64)
    records = _select(CODES[:, :, [1, 2]], floors, select=None, latents=[1, 2], position=0)
    # At the class token both latents are 0 on both images: inactive, not below the floor.
    assert [r.status for r in records] == ["inactive"] * 4


def test_the_default_floor_is_a_tenth_and_can_be_turned_off():
    assert TargetRule(select="top", count=1).min_relative_activation == DEFAULT_RELATIVE_FLOOR == 0.1
    assert TargetRule(select="top", count=1, min_relative_activation=0).min_relative_activation == 0
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError):
            TargetRule(select="top", count=1, min_relative_activation=bad)


def test_a_stored_spec_without_the_floor_reads_as_a_run_without_one():
    spec = {
        "backbone": {"name": "toy_vit"}, "sae": [{"name": "toy_sae"}], "dataset": {"name": "shapes"},
        "targets": [{"select": "top", "count": 2, "token": "argmax", "min_activation": 0.0, "latents": None}],
        "attributors": [{"name": "random"}], "metrics": [{"name": "insertion"}],
    }
    old = RunSpec.model_validate(stored_spec_data(spec))
    assert old.targets[0].min_relative_activation == 0.0
    now = RunSpec.model_validate(spec)
    assert now.targets[0].min_relative_activation == 0.1
    assert old.canonical() != now.canonical()  # so a run stored without the floor is not resumed with it
    recorded = {**spec, "targets": [{**spec["targets"][0], "min_relative_activation": 0.3}]}
    assert RunSpec.model_validate(stored_spec_data(recorded)).targets[0].min_relative_activation == 0.3


def test_diagnostics_are_the_median_and_largest_relative_error_per_attributor():
    rows = [
        {"sae": "s", "attributor": "ig", "info.relative_delta": v} for v in (0.01, 0.03, 0.02, float("nan"))
    ] + [
        {"sae": "s", "attributor": "lrp", "info.conservation_error": e, "info.z": z}
        for e, z in ((-1.0, 2.0), (3.0, 1.0), (0.5, -5.0), (1.0, 0.0))  # |e| / |z|: 0.5, 3, 0.1, undefined
    ] + [{"sae": "s", "attributor": "plain"}]
    found = {(d["diagnostic"], d["attributor"]): d for d in heatmap_diagnostics(rows)}
    assert set(found) == {("completeness |delta|/|f(x)-f(x0)|", "ig"), ("conservation |error|/|z|", "lrp")}
    ig = found[("completeness |delta|/|f(x)-f(x0)|", "ig")]
    assert (ig["n"], ig["median"], ig["max"]) == (3, pytest.approx(0.02), pytest.approx(0.03))
    lrp = found[("conservation |error|/|z|", "lrp")]
    assert (lrp["n"], lrp["median"], lrp["max"]) == (3, pytest.approx(0.5), pytest.approx(3.0))
