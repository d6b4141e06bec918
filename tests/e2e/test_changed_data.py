"""A resumed run over a folder that changed: new images are computed, changed ones refused, gone ones unreported."""

import os
import shutil

import numpy as np
import pytest
from PIL import Image

import cafe_core
from cafe_core.plugins import PluginHost
from cafe_core.store import RunDirectoryError
from test_run import counting_plugin

pytestmark = pytest.mark.slow


def run_counting(spec, out):
    calls = []
    host = PluginHost()
    host.add(counting_plugin(calls), "counting")
    return cafe_core.run(spec, out, host=host), sum(calls)


def new_picture(path, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def folder_spec(spec_dict, assets, tmp_path):
    shutil.copytree(assets / "images", tmp_path / "images")
    spec_dict["dataset"]["path"] = str(tmp_path / "images")
    spec_dict["attributors"] = [{"name": "counting"}]
    return spec_dict


def test_new_images_are_computed_and_nothing_else(folder_spec, tmp_path):
    first, first_calls = run_counting(folder_spec, tmp_path / "run")
    assert first_calls == sum(t["status"] == "explained" for t in first.targets)
    new_picture(tmp_path / "images" / "img2a.png", seed=11)  # sorts among the old images: batches shift
    resumed, resumed_calls = run_counting(folder_spec, tmp_path / "run")
    new_targets = [t for t in resumed.targets if t["image_id"] == "img2a.png"]
    assert new_targets and resumed_calls == sum(t["status"] == "explained" for t in new_targets)
    fresh, _ = run_counting(folder_spec, tmp_path / "fresh")
    key = lambda r: (r["image_id"], r["latent"], r["position"], r["metric"])  # noqa: E731
    assert sorted(map(key, resumed.rows)) == sorted(map(key, fresh.rows))


def test_a_changed_image_is_refused_by_name_and_a_touched_one_is_not(folder_spec, tmp_path):
    run_counting(folder_spec, tmp_path / "run")
    touched = tmp_path / "images" / "img1.png"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    _, calls = run_counting(folder_spec, tmp_path / "run")
    assert calls == 0  # same bytes: the hash says unchanged
    new_picture(tmp_path / "images" / "img3.png", seed=12)
    with pytest.raises(RunDirectoryError, match=r"1 image\(s\) changed since this run .*: img3\.png; restore"):
        run_counting(folder_spec, tmp_path / "run")


def test_an_image_removed_from_the_folder_is_not_reported(folder_spec, tmp_path):
    first, _ = run_counting(folder_spec, tmp_path / "run")
    assert "img4.png" in {r["image_id"] for r in first.rows}
    (tmp_path / "images" / "img4.png").unlink()
    resumed, calls = run_counting(folder_spec, tmp_path / "run")
    assert calls == 0
    assert {r["image_id"] for r in resumed.rows} == {r["image_id"] for r in first.rows} - {"img4.png"}
    assert "img4.png" not in {t["image_id"] for t in resumed.targets}
