"""The report's figures have content and bounded sizes; outlines, crops and pages are right; imports stay light."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cafe_report.drawing import outline_segments
from cafe_report.figures import MapPanel, curves_figure, target_strip
from cafe_report.gallery import GalleryRow, cause_crop, gallery_figure
from cafe_report.markup import escape, pager, table
from cafe_report.nonlocal_figure import nonlocal_figure

MAX_BYTES = 150_000


def assert_has_content(path, max_bytes=MAX_BYTES):
    """A PNG that is not a single colour, has several distinct colours, and stays small."""
    assert path.stat().st_size < max_bytes
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.reshape(-1, 3).std(axis=0).max() > 10, "the figure is (nearly) a single colour"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20
    return pixels


def _image(seed=0, size=32):
    return np.random.default_rng(seed).uniform(size=(size, size, 3))


def test_outline_of_one_cell_and_of_an_l_shape():
    single = np.zeros((3, 3), dtype=bool)
    single[1, 2] = True
    assert sorted(outline_segments(single)) == sorted(
        [((2, 1), (3, 1)), ((2, 2), (3, 2)), ((2, 1), (2, 2)), ((3, 1), (3, 2))]
    )
    l_shape = np.array([[True, True], [True, False]])
    segments = outline_segments(l_shape)
    assert len(segments) == 8  # the perimeter of three unit cells sharing two edges: 3 * 4 - 2 * 2
    assert ((1, 0), (1, 1)) not in segments and ((0, 1), (1, 1)) not in segments  # the shared edges


def test_cause_crop_is_the_bounding_box_widened_by_a_patch():
    cause = np.zeros((8, 8), dtype=bool)
    cause[2, 3] = cause[4, 5] = True
    rows, cols = cause_crop(cause, (4, 4))
    assert (rows.start, rows.stop, cols.start, cols.stop) == (4, 24, 8, 28)
    corner = np.zeros((8, 8), dtype=bool)
    corner[0, 7] = True
    rows, cols = cause_crop(corner, (4, 4))
    assert (rows.start, rows.stop, cols.start, cols.stop) == (0, 8, 24, 32)
    assert cause_crop(np.zeros((8, 8), dtype=bool), (4, 4)) is None


def test_target_strip_draws_every_panel(tmp_path):
    rng = np.random.default_rng(1)
    cause = np.zeros((8, 8), dtype=bool)
    cause[2:4, 5] = True
    panels = [MapPanel("image", kind="image"), MapPanel("activation_map", rng.uniform(size=(8, 8)), "activation"),
              MapPanel("attnlrp", rng.normal(size=(8, 8)), "relevance", cause),
              MapPanel("activation_map", kind="note", note="cls target:\nnothing to show")]
    path = target_strip(tmp_path / "strip.png", _image(), panels, (4, 4), fired=(2, 5))
    pixels = assert_has_content(path)
    assert pixels.shape[1] > 3 * pixels.shape[0]  # four panels side by side
    # the diverging map puts red (positive) and blue (negative) on the iERF panel
    red = (pixels[..., 0] > 150) & (pixels[..., 2] < 110)
    blue = (pixels[..., 2] > 150) & (pixels[..., 0] < 110)
    assert red.sum() > 20 and blue.sum() > 20


def test_curves_and_nonlocal_plots(tmp_path):
    fractions = np.linspace(0, 1, 17)
    curves = {"insertion": {"attnlrp": (fractions, np.sqrt(fractions), 0.6), "random": (fractions, fractions, 0.5)},
              "deletion": {"attnlrp": (fractions, 1 - np.sqrt(fractions), 0.3)}}
    assert_has_content(curves_figure(tmp_path / "curves.png", curves, {"insertion": True, "deletion": False}))
    result = {"criterion": "own_patch_share < 0.5", "attributor": "attnlrp", "layers": [
        {"layer": 0, "share": 0.08, "low": 0.05, "high": 0.12, "nonlocal": 16, "sampled": 200},
        {"layer": 3, "share": 0.3, "low": 0.24, "high": 0.37, "nonlocal": 60, "sampled": 200}]}
    assert_has_content(nonlocal_figure(tmp_path / "nonlocal.png", result))


def test_gallery_rows_with_and_without_an_activation_map(tmp_path):
    rng = np.random.default_rng(2)
    cause = np.zeros((8, 8), dtype=bool)
    cause[1, 1] = True
    rows = [GalleryRow("img-0\nz=1", _image(3), rng.uniform(size=(8, 8)), rng.normal(size=(8, 8)), cause, (1, 1)),
            GalleryRow("img-1 (cls)", _image(4), None, rng.normal(size=(8, 8)), cause, None)]
    pixels = assert_has_content(gallery_figure(tmp_path / "gallery.png", rows, (4, 4), "top activating"))
    assert pixels.shape[0] > pixels.shape[1] / 3  # two rows of four panels
    assert_has_content(gallery_figure(tmp_path / "empty.png", [], (4, 4), "nothing"), max_bytes=60_000)


def test_markup_escapes_and_paginates():
    assert escape('<b a="1">') == "&lt;b a=&quot;1&quot;&gt;"
    assert "<td class=\"text\">&lt;x&gt;</td>" in table(["name", "n"], [["<x>", 3]])
    links = pager(["p1.html", "p2.html", "p3.html"], 1)
    assert '<a href="p1.html">1</a>' in links and "<span>2</span>" in links and pager(["only.html"], 0) == ""


@pytest.mark.parametrize("module", ["cafe_report.plugin", "cafe_faithfulness.plugin"])
def test_plugin_modules_import_neither_torch_nor_matplotlib(module):
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
