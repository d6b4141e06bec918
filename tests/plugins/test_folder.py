"""The folder dataset: every image under a directory, any size and mode, unreadable files named."""

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from cafe_core.errors import CafeError
from cafe_core.plugins import PluginHost


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), mode="L").save(tmp_path / "a.JPG")
    Image.fromarray(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8), mode="RGBA").save(tmp_path / "sub" / "c.png")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def build(**params):
    return PluginHost().registry("dataset").get("folder").build(params)


def test_every_image_sorted_by_relative_path_with_mode_and_size_kept(folder):
    dataset = build(path=str(folder))
    assert [item.image_id for item in dataset] == ["a.JPG", "b.png", "sub/c.png"]
    modes = {item.image_id: (item.image.mode, item.image.size) for item in dataset}
    assert modes == {"a.JPG": ("L", (16, 16)), "b.png": ("RGB", (30, 20)), "sub/c.png": ("RGBA", (8, 8))}
    assert np.array_equal(np.asarray(dataset[1].image), np.asarray(Image.open(folder / "b.png")))


def test_subfolders_and_extensions_can_be_excluded(folder):
    assert [i.image_id for i in build(path=str(folder), recursive=False)] == ["a.JPG", "b.png"]
    assert [i.image_id for i in build(path=str(folder), extensions=["png"])] == ["b.png", "sub/c.png"]


def test_an_unreadable_image_is_named_and_not_skipped(folder):
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    dataset = build(path=str(folder))
    assert len(dataset) == 4
    with pytest.raises(CafeError, match=r"cannot read image '.*broken\.png'.*fix or remove the file"):
        list(dataset)


def test_missing_or_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(ValidationError, match="path"):
        PluginHost().registry("dataset").get("folder").validate({"path": str(tmp_path / "absent")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(CafeError, match="no images with suffixes"):
        build(path=str(tmp_path / "empty"))


def test_images_of_any_size_become_model_inputs(folder):
    backbone = PluginHost().registry("backbone").get("toy_vit").build({})
    x = backbone.preprocess([item.image for item in build(path=str(folder))])
    assert x.shape == (3, 3, 32, 32)
