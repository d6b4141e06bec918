"""Tests of the cafe-plugin-shapes distribution: generated scenes, their ground truth and registration.

Expected values are derived here from first principles: the labelling rules are written out again, colours
are read back from pixels by their nearest pure hue, and shapes by their geometry.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import get_args

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from cafe_core.plugins import PluginHost
from cafe_core.protocols import Dataset, ImageItem
from cafe_shapes import (
    COLOURS,
    PALETTE,
    RULES,
    ShapesDataset,
    ShapesParams,
    patch_object_fraction,
    patch_object_fractions,
)
from cafe_shapes.params import RuleName

N_ITEMS = 2000

# Pure hues; a palette colour is named after the nearest one.
HUES = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
}


@pytest.fixture(scope="module")
def items():
    return list(ShapesDataset(size=N_ITEMS, seed=3))


@pytest.fixture(scope="module")
def pair_items():
    return list(ShapesDataset(size=400, seed=5, rule="same_colour_pair"))


def _hwc(item: ImageItem) -> np.ndarray:
    return item.image.permute(1, 2, 0).numpy()


def _hue_name(rgb: np.ndarray) -> str:
    return min(HUES, key=lambda name: float(np.sum((np.asarray(HUES[name]) - rgb) ** 2)))


def _saturated(image: np.ndarray) -> np.ndarray:
    """Pixels far from grey: where a flat, saturated object colour is painted."""
    return image.max(axis=-1) - image.min(axis=-1) > 0.5


def _object_pixels(item: ImageItem, k: int) -> np.ndarray:
    return item.info["mask"] == k + 1


def _colour_from_pixels(item: ImageItem, k: int) -> str:
    pixels = _hwc(item)[_object_pixels(item, k)]
    assert len(pixels) > 0
    assert np.all(pixels == pixels[0]), "an object is not painted in one flat colour"
    return _hue_name(pixels[0])


def _crop(region: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(region)
    return region[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def _is_triangle_from_pixels(region: np.ndarray) -> bool:
    """An upright triangle widens from top to bottom; squares, circles and crosses are symmetric."""
    widths = _crop(region).sum(axis=1)
    return bool(widths[-1] > widths[0])


# --------------------------------------------------------------------------------------------- registration


def test_built_through_the_plugin_host():
    registration = PluginHost().registry("dataset").get("shapes")
    dataset = registration.build({"size": 10})
    assert isinstance(dataset, Dataset)
    assert registration.description
    assert len(dataset) == 10
    ids = [item.image_id for item in dataset]
    assert ids == [f"shapes-0-{i:06d}" for i in range(10)]
    item = dataset[4]
    assert isinstance(item, ImageItem)
    assert item.image.dtype == torch.float32 and item.image.shape == (3, 32, 32)
    assert 0.0 <= float(item.image.min()) and float(item.image.max()) <= 1.0
    assert set(item.info) == {"label", "objects", "mask", "deciding"}
    assert item.info["mask"].shape == (32, 32)


@pytest.mark.parametrize(
    "raw",
    [
        {"size": 0},
        {"seed": -1},
        {"image_size": 8},
        {"rule": "bigger_than"},
        {"min_objects": 0},
        {"max_objects": 7},
        {"min_objects": 4, "max_objects": 3},
        {"rule": "same_colour_pair", "min_objects": 1},
        {"rule": "same_colour_pair", "max_objects": 5},
        {"colour": "red"},
    ],
)
def test_bad_params_are_rejected(raw):
    registration = PluginHost().registry("dataset").get("shapes")
    with pytest.raises(ValidationError):
        registration.validate(raw)
    with pytest.raises(ValidationError):
        ShapesParams(**raw)
    with pytest.raises(ValidationError):
        registration.build(raw)


def test_good_params_are_accepted():
    params = ShapesParams(size=3, seed=9, image_size=48, rule="same_colour_pair", min_objects=2, max_objects=4)
    dataset = ShapesDataset(**params.model_dump())
    assert dataset[0].image.shape == (3, 48, 48)
    assert dataset.num_classes == 2 and len(dataset.class_names) == 2
    assert ShapesDataset().num_classes == 4


def test_every_rule_and_colour_is_declared_once():
    assert set(get_args(RuleName)) == set(RULES)
    assert tuple(PALETTE) == COLOURS
    assert {_hue_name(rgb) for rgb in PALETTE.values()} == set(COLOURS)
    assert all(_hue_name(rgb) == name for name, rgb in PALETTE.items())


# ----------------------------------------------------------------------------------------- reproducibility


def _same_item(a: ImageItem, b: ImageItem) -> bool:
    return (
        a.image_id == b.image_id
        and torch.equal(a.image, b.image)
        and np.array_equal(a.info["mask"], b.info["mask"])
        and a.info["label"] == b.info["label"]
        and a.info["objects"] == b.info["objects"]
        and a.info["deciding"] == b.info["deciding"]
    )


def test_same_seed_and_index_give_the_same_item():
    first, second = ShapesDataset(size=20, seed=11), ShapesDataset(size=20, seed=11)
    for index in (0, 7, 19):
        assert _same_item(first[index], second[index])
    # Random access does not depend on what was generated before.
    assert _same_item(first[13], list(second)[13])


def test_different_seeds_give_different_items():
    first, second = ShapesDataset(size=10, seed=0), ShapesDataset(size=10, seed=1)
    for index in range(10):
        assert first[index].image_id != second[index].image_id
        assert not torch.equal(first[index].image, second[index].image)


def test_items_differ_within_a_dataset():
    dataset = ShapesDataset(size=50)
    images = torch.stack([item.image for item in dataset])
    assert len({tuple(image.flatten()[:64].tolist()) for image in images}) == 50


def test_a_smaller_dataset_is_a_prefix_of_a_larger_one():
    small, large = ShapesDataset(size=5, seed=2), ShapesDataset(size=6, seed=2)
    for index in range(5):
        assert _same_item(small[index], large[index])
    with pytest.raises(IndexError):
        small[5]
    assert _same_item(large[-1], large[5])


def test_tensors_stack_the_items():
    dataset = ShapesDataset(size=12, seed=4)
    images, labels, masks = dataset.tensors(3, 9)
    assert images.shape == (6, 3, 32, 32) and images.dtype == torch.float32
    assert labels.shape == (6,) and labels.dtype == torch.int64
    assert masks.shape == (6, 32, 32) and masks.dtype == torch.int64
    for row, index in enumerate(range(3, 9)):
        item = dataset[index]
        assert torch.equal(images[row], item.image)
        assert int(labels[row]) == item.info["label"]
        assert np.array_equal(masks[row].numpy(), item.info["mask"])
    assert dataset.tensors()[0].shape[0] == 12
    assert dataset.tensors(5, 5)[0].shape[0] == 0
    with pytest.raises(ValueError):
        dataset.tensors(0, 13)
    with pytest.raises(ValueError):
        dataset.tensors(6, 5)


# ------------------------------------------------------------------------------------------------ labels


def test_classes_are_balanced(items, pair_items):
    counts = Counter(item.info["label"] for item in items)
    assert set(counts) == {0, 1, 2, 3}
    for label in range(4):
        assert abs(counts[label] - N_ITEMS / 4) <= 0.05 * N_ITEMS
    pair_counts = Counter(item.info["label"] for item in pair_items)
    assert set(pair_counts) == {0, 1}
    assert abs(pair_counts[1] - len(pair_items) / 2) <= 0.08 * len(pair_items)


def test_object_counts_stay_within_bounds(items):
    counts = Counter(len(item.info["objects"]) for item in items)
    assert set(counts) == {2, 3, 4}
    few = ShapesDataset(size=40, min_objects=1, max_objects=1)
    assert all(len(item.info["objects"]) == 1 for item in few)
    many = ShapesDataset(size=40, image_size=16, min_objects=6, max_objects=6)
    assert all(len(item.info["objects"]) == 6 for item in many)


def test_labels_agree_with_the_object_records(items):
    for item in items:
        objects = item.info["objects"]
        red = any(o["colour"] == "red" for o in objects)
        triangle = any(o["shape"] == "triangle" for o in objects)
        assert item.info["label"] == 2 * red + triangle


def test_labels_agree_with_the_pixels(items):
    for item in items:
        image, mask = _hwc(item), item.info["mask"]
        # Objects, and only objects, are painted in saturated colours.
        assert np.array_equal(_saturated(image), mask > 0)
        red_pixels = 0
        triangle = False
        for k in range(int(mask.max())):
            region = _object_pixels(item, k)
            if _colour_from_pixels(item, k) == "red":
                red_pixels += int(region.sum())
            triangle |= _is_triangle_from_pixels(region)
        assert item.info["label"] == 2 * (red_pixels > 0) + triangle


def test_deciding_objects_follow_the_rule(items):
    for item in items:
        objects = item.info["objects"]
        expected = [k for k, o in enumerate(objects) if o["colour"] == "red" or o["shape"] == "triangle"]
        assert item.info["deciding"] == expected
        assert (item.info["deciding"] == []) == (item.info["label"] == 0)


def test_same_colour_pair_rule(pair_items):
    for item in pair_items:
        objects = item.info["objects"]
        record_colours = [o["colour"] for o in objects]
        pixel_colours = [_colour_from_pixels(item, k) for k in range(len(objects))]
        assert pixel_colours == record_colours
        shared = len(set(pixel_colours)) < len(pixel_colours)
        assert item.info["label"] == int(shared)
        expected = [k for k, c in enumerate(record_colours) if record_colours.count(c) >= 2]
        assert item.info["deciding"] == expected


# ----------------------------------------------------------------------------------------- objects, masks


def _check_geometry(item: ImageItem, k: int, record: dict) -> None:
    region = _object_pixels(item, k)
    crop = _crop(region)
    height, width = crop.shape
    area = int(region.sum())
    assert area == record["area"]
    shape = record["shape"]
    if shape == "square":
        assert height == width and area == width * width
    elif shape == "circle":
        assert height == width
        expected = math.pi * (width / 2) ** 2
        assert abs(area - expected) <= 0.15 * expected + 1
        assert np.array_equal(crop, crop[::-1]) and np.array_equal(crop, crop[:, ::-1])
    elif shape == "triangle":
        widths = crop.sum(axis=1)
        assert np.all(np.diff(widths) >= 0) and widths[-1] == width
        expected = width * width / 2  # upright, as high as its base is wide
        assert abs(area - expected) <= 0.15 * expected + 1
        assert np.array_equal(crop, crop[:, ::-1])
    else:
        assert height == width and shape == "cross"
        arm = int(crop[0].sum())
        assert arm < width
        assert area == 2 * width * arm - arm * arm
        assert np.array_equal(crop, crop.T) and np.array_equal(crop, crop[::-1])


def test_each_object_has_its_colour_and_shape(items):
    for item in items[:500]:
        image = _hwc(item)
        for k, record in enumerate(item.info["objects"]):
            region = _object_pixels(item, k)
            assert _colour_from_pixels(item, k) == record["colour"]
            assert np.all(image[region] == image[region][0])
            _check_geometry(item, k, record)


@pytest.mark.parametrize("image_size", [16, 24, 64])
def test_geometry_at_other_image_sizes(image_size):
    dataset = ShapesDataset(size=60, seed=8, image_size=image_size)
    shapes = Counter()
    for item in dataset:
        assert item.image.shape == (3, image_size, image_size)
        for k, record in enumerate(item.info["objects"]):
            assert _colour_from_pixels(item, k) == record["colour"]
            _check_geometry(item, k, record)
            shapes[record["shape"]] += 1
    assert set(shapes) == {"square", "circle", "triangle", "cross"}


def test_records_match_the_mask(items):
    for item in items[:500]:
        mask, objects = item.info["mask"], item.info["objects"]
        assert int(mask.max()) == len(objects) and int(mask.min()) == 0
        for k, record in enumerate(objects):
            rows, cols = np.nonzero(mask == k + 1)
            assert record["bbox"] == (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)
            assert record["centre"] == pytest.approx((rows.mean(), cols.mean()))


def test_objects_are_inside_the_image_and_apart(items):
    for item in items:
        mask = item.info["mask"]
        size = mask.shape[0]
        objects = item.info["objects"]
        for record in objects:
            top, left, bottom, right = record["bbox"]
            assert 0 <= top < bottom <= size and 0 <= left < right <= size
        for a in range(len(objects)):
            for b in range(a + 1, len(objects)):
                ta, la, ba, ra = objects[a]["bbox"]
                tb, lb, bb, rb = objects[b]["bbox"]
                assert ba <= tb or bb <= ta or ra <= lb or rb <= la, "bounding boxes overlap"
        # No two objects touch, not even diagonally.
        padded = np.pad(mask, 1)
        centre = padded[1:-1, 1:-1]
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                neighbour = padded[1 + dy : 1 + dy + size, 1 + dx : 1 + dx + size]
                touching = (centre > 0) & (neighbour > 0) & (centre != neighbour)
                assert not touching.any()


def test_backgrounds_differ_between_images(items):
    backgrounds = []
    for item in items[:20]:
        image, mask = _hwc(item), item.info["mask"]
        backgrounds.append(image[mask == 0].mean(axis=0))
        assert image[mask == 0].std() < 0.15  # low contrast
    assert len({tuple(np.round(b, 4)) for b in backgrounds}) == 20


# --------------------------------------------------------------------------------------- patch coverage

HAND_MASK = np.array(
    [
        [1, 1, 0, 0],
        [1, 0, 0, 2],
        [0, 0, 2, 2],
        [3, 0, 2, 2],
    ]
)


def test_patch_object_fraction_on_a_hand_made_mask():
    np.testing.assert_allclose(patch_object_fraction(HAND_MASK, 2), [[0.75, 0.25], [0.25, 1.0]])
    np.testing.assert_allclose(patch_object_fraction(HAND_MASK, 2, objects=[1]), [[0.0, 0.25], [0.0, 1.0]])
    np.testing.assert_allclose(patch_object_fraction(HAND_MASK, 2, objects=[0, 2]), [[0.75, 0.0], [0.25, 0.0]])
    np.testing.assert_allclose(patch_object_fraction(HAND_MASK, 2, objects=[]), np.zeros((2, 2)))
    np.testing.assert_allclose(
        patch_object_fraction(HAND_MASK, (1, 2)), [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.5, 1.0]]
    )
    np.testing.assert_allclose(patch_object_fraction(torch.from_numpy(HAND_MASK), 4), [[9 / 16]])
    with pytest.raises(ValueError):
        patch_object_fraction(HAND_MASK, 3)


def test_patch_object_fractions_per_object():
    per_object = patch_object_fractions(HAND_MASK, 2)
    assert per_object.shape == (3, 2, 2)
    np.testing.assert_allclose(per_object[0], [[0.75, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(per_object[1], [[0.0, 0.25], [0.0, 1.0]])
    np.testing.assert_allclose(per_object[2], [[0.0, 0.0], [0.25, 0.0]])
    assert patch_object_fractions(HAND_MASK, 2, num_objects=5).shape == (5, 2, 2)


def test_patch_fractions_of_a_generated_item():
    item = ShapesDataset(size=3, seed=1)[2]
    mask = item.info["mask"]
    total = patch_object_fraction(mask, 4)
    per_object = patch_object_fractions(mask, 4, num_objects=len(item.info["objects"]))
    np.testing.assert_allclose(per_object.sum(axis=0), total)
    for k, record in enumerate(item.info["objects"]):
        assert per_object[k].sum() * 16 == pytest.approx(record["area"])


# -- the object_hit ground-truth metric ---------------------------------------------------------------------


class _Grid:
    """Just the geometry a metric reads from a backbone: a 4x4 grid of 2-pixel patches."""

    image_size, patch_size, grid_size, prefix_tokens = (8, 8), (2, 2), (4, 4), ()


def _object_hit_rows(heatmaps, annotations, **params):
    from types import SimpleNamespace

    from cafe_core.protocols import RunContext
    from cafe_shapes.ground_truth import ObjectHit

    target = SimpleNamespace(backbone=_Grid())
    x = torch.zeros(len(heatmaps), 3, 8, 8)
    return ObjectHit(**params).evaluate(target, x, torch.stack(heatmaps), RunContext(), annotations).score


def test_object_hit_counts_top_patches_on_deciding_objects():
    mask = np.zeros((8, 8), dtype=np.int64)
    mask[0:2, 0:2] = 1  # object 0: patch (0, 0)
    mask[5, 5] = 2  # object 1: one pixel of patch (2, 2)
    heat = torch.zeros(4, 4)
    heat[2, 2], heat[0, 0], heat[3, 3] = 3.0, 2.0, 1.0
    info = {"mask": mask, "deciding": [1]}
    assert _object_hit_rows([heat], [info], top_k=1).tolist() == [1.0]
    assert _object_hit_rows([heat], [info], top_k=2).tolist() == [0.5]  # (0, 0) is on object 0, not deciding
    assert _object_hit_rows([heat], [info], top_k=2, objects="any").tolist() == [1.0]
    assert _object_hit_rows([heat], [info], top_k=3, objects="any").tolist() == pytest.approx([2 / 3])


def test_object_hit_is_undefined_without_deciding_objects_or_annotations():
    mask = np.zeros((8, 8), dtype=np.int64)
    mask[0:2, 0:2] = 1
    scores = _object_hit_rows([torch.ones(4, 4)] * 2, [{"mask": mask, "deciding": []}, {}])
    assert torch.isnan(scores).all()


def test_object_hit_resizes_a_mask_of_another_size():
    mask = np.zeros((16, 16), dtype=np.int64)
    mask[12:16, 0:4] = 1  # bottom-left corner: patch (3, 0) at the backbone's 8x8 input
    heat = torch.zeros(4, 4)
    heat[3, 0] = 1.0
    assert _object_hit_rows([heat], [{"mask": mask, "deciding": [0]}]).tolist() == [1.0]


def test_object_hit_in_a_run_receives_each_rows_annotations(tmp_path):
    import cafe_core

    spec = {
        "backbone": {"name": "timm", "model": "vit_tiny_patch16_224", "img_size": 32,
                     "model_kwargs": {"patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}},
        "sae": {"name": "random", "d_in": 32, "d_sae": 64, "layer": 1},
        "dataset": {"name": "shapes", "size": 4},
        "targets": {"select": "top", "count": 2},
        "attributors": [{"name": "gradient_x_input"}],
        "metrics": [{"name": "object_hit", "objects": "any", "top_k": 16}],
        "run": {"batch_size": 3, "device": "cpu"},
    }
    results = cafe_core.run(spec, tmp_path / "run")
    assert len(results.rows) == 8
    # with every patch checked, the score is the share of patches that touch any object of that image
    from cafe_shapes import ShapesDataset, patch_object_fraction

    dataset = ShapesDataset(4)
    for row in results.rows:
        index = int(row["image_id"].rsplit("-", 1)[1])
        expected = (patch_object_fraction(dataset[index].info["mask"], 8) > 0).mean()
        assert row["score"] == pytest.approx(expected)


def test_object_hit_passes_the_metric_conformance_kit():
    from types import SimpleNamespace

    from cafe_core.testing import check_metric
    from cafe_shapes.ground_truth import ObjectHit

    dataset = ShapesDataset(3, seed=5)
    annotations = [dataset[i].info for i in range(3)]
    target = SimpleNamespace(backbone=SimpleNamespace(image_size=(32, 32), patch_size=(4, 4), grid_size=(8, 8)))
    target.select = lambda rows: target
    heatmap = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    check_metric(ObjectHit(top_k=3), target, torch.zeros(3, 3, 32, 32), heatmap, annotations=annotations)
