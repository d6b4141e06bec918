"""``cafe features`` and ``cafe analyze nonlocal`` on a small real ViT, checked against brute-force recomputation."""

from __future__ import annotations

import csv
import json
import math
import pathlib

import numpy as np
import pytest
import torch
from PIL import Image

from cafe_core.cli import main
from cafe_core.plugins import PluginHost
from cafe_core.protocols import RunContext, TargetFunction
from conftest import DEPTH, IMAGE, PATCH, WIDTH

pytestmark = pytest.mark.slow

SPEC = """
[backbone]
name = "timm"
model = "vit_tiny_patch16_224"
checkpoint = "{assets}/vit.safetensors"
img_size = {image}
model_kwargs = {{ patch_size = {patch}, depth = {depth}, embed_dim = {width}, num_heads = 2 }}

[[sae]]
name = "relu"
path = "{assets}/sae.safetensors"
layer = 1

[[sae]]
name = "random"
d_in = {width}
d_sae = 48
layer = 0
tokens = "cls"
seed = 3

[dataset]
name = "folder"
path = "{assets}/images"

[[targets]]
select = "top"
count = 1

[[attributors]]
name = "activation_map"

[[attributors]]
name = "gradient_x_input"

[run]
batch_size = 2
device = "cpu"
seed = 0
"""


@pytest.fixture
def spec_path(assets, tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(SPEC.format(assets=assets.as_posix(), image=IMAGE, patch=PATCH, depth=DEPTH, width=WIDTH))
    return path


def _components(assets):
    """The backbone, the layer-1 SAE and the images, built directly (not through the commands)."""
    host = PluginHost()
    backbone = host.registry("backbone").get("timm").build({
        "model": "vit_tiny_patch16_224", "checkpoint": str(assets / "vit.safetensors"), "img_size": IMAGE,
        "model_kwargs": {"patch_size": PATCH, "depth": DEPTH, "embed_dim": WIDTH, "num_heads": 2}})
    sae = host.registry("sae").get("relu").build({"path": str(assets / "sae.safetensors"), "layer": 1})
    files = sorted((assets / "images").iterdir())
    x = backbone.preprocess([Image.open(f).copy() for f in files])
    return host, backbone, sae, [f.name for f in files], x


def test_feature_pages_rank_images_by_activation_and_by_relevance(spec_path, assets, tmp_path):
    out = tmp_path / "features"
    assert main(["features", str(spec_path), "--layer", "1", "--latents", "3,17", "--count", "2", "--out", str(out),
                 "--no-progress", "--device", "cpu"]) == 0
    pages = json.loads((out / "features.json").read_text())
    assert pages["attributor"] == "gradient_x_input" and pages["images"] == 5

    host, backbone, sae, ids, x = _components(assets)
    attributor = host.registry("attributor").get("gradient_x_input").build({})
    with torch.no_grad():
        codes = sae.encode(backbone.forward_to(x, 1)[:, 1:])  # [5, 16 patches, d_sae]
    for latent in (3, 17):
        values, where = codes[:, :, latent].max(dim=1)
        active = [i for i in range(5) if values[i] > 0]
        by_activation = sorted(active, key=lambda i: -float(values[i]))[:2]
        got = pages["latents"][str(latent)]
        assert [r["image_id"] for r in got["activation"]] == [ids[i] for i in by_activation]
        assert [r["activation"] for r in got["activation"]] == pytest.approx([float(values[i]) for i in by_activation])
        target = TargetFunction(backbone, sae, 1, [latent] * len(active), [int(where[i]) + 1 for i in active])
        heatmap = attributor.attribute(target, x[active], RunContext(batch_size=8)).heatmap
        relevance = heatmap.clamp_min(0).flatten(1).sum(1)
        by_relevance = [active[j] for j in torch.argsort(-relevance).tolist()[:2]]
        assert [r["image_id"] for r in got["relevance"]] == [ids[i] for i in by_relevance]
        assert [r["relevance"] for r in got["relevance"]] == pytest.approx(
            sorted(relevance.tolist(), reverse=True)[:2], rel=1e-4)
        page = (out / f"latent-1-{latent}.html").read_text()
        assert "Top activating images" in page and "Most relevant images" in page
    figures = sorted((out / "figures").glob("*.png"))
    assert len(figures) == 4
    for figure in figures:
        assert figure.stat().st_size < 200_000
        pixels = np.asarray(Image.open(figure).convert("RGB"))
        assert pixels.reshape(-1, 3).std(axis=0).max() > 10


def test_feature_pages_need_a_layer_when_the_spec_has_several(spec_path, tmp_path, capsys):
    assert main(["features", str(spec_path), "--latents", "3", "--out", str(tmp_path / "f"), "--device", "cpu"]) == 1
    assert "choose one with --layer" in capsys.readouterr().err


def test_feature_pages_of_a_class_token_latent_say_there_is_no_activation_map(spec_path, tmp_path):
    out = tmp_path / "cls"
    assert main(["features", str(spec_path), "--layer", "0", "--latents", "5", "--count", "2", "--out", str(out),
                 "--no-progress", "--device", "cpu"]) == 0
    ranked = json.loads((out / "features.json").read_text())["latents"]["5"]
    assert {r["position"] for r in ranked["activation"] + ranked["relevance"]} <= {0}  # read at the class token
    assert "the activation map has nothing to show" in (out / "latent-0-5.html").read_text()


def test_nonlocal_analysis_counts_what_a_brute_force_recomputation_finds(spec_path, assets, tmp_path, capsys):
    out = tmp_path / "nonlocal"
    assert main(["analyze", "nonlocal", str(spec_path), "--latents", "12", "--attributor", "gradient_x_input",
                 "--seed", "5", "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "nonlocal.json").read_text())
    assert [row["layer"] for row in result["layers"]] == [1]
    assert [row["layer"] for row in result["class_token_saes"]] == [0]  # no patch of their own: listed apart
    assert "own_patch_share < 0.5" in printed and "rule:" in printed

    host, backbone, sae, ids, x = _components(assets)
    attributor = host.registry("attributor").get("gradient_x_input").build({})
    with torch.no_grad():
        codes = sae.encode(backbone.forward_to(x, 1)[:, 1:]).numpy()  # [5, 16, d_sae]
    flat = codes.reshape(-1, codes.shape[-1])
    best = flat.argmax(0)  # first maximum in (image, patch) order
    alive = np.flatnonzero(flat.max(0) > 0)
    chosen = np.sort(np.random.default_rng(5 + 1).choice(alive, size=12, replace=False))
    with open(out / "nonlocal.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["layer"] == "1"]
    assert [int(r["latent"]) for r in rows] == chosen.tolist()
    images, patches = best[chosen] // 16, best[chosen] % 16
    target = TargetFunction(backbone, sae, 1, chosen, patches + 1)
    heatmap = attributor.attribute(target, x[images], RunContext(batch_size=16)).heatmap.double().numpy()
    positive = np.clip(heatmap.reshape(len(chosen), -1), 0, None)
    own = positive[np.arange(len(chosen)), patches] / positive.sum(1)
    for row, image, share in zip(rows, images, own):
        assert row["image_id"] == ids[image]
        assert float(row["own_patch_share"]) == pytest.approx(share, rel=1e-5)
        assert (row["nonlocal"] == "True") == (share < 0.5)
    layer = result["layers"][0]
    k, n = int((own < 0.5).sum()), len(chosen)
    assert (layer["nonlocal"], layer["sampled"], layer["alive"]) == (k, n, len(alive))
    assert layer["share"] == pytest.approx(k / n)
    z = 1.959963984540054
    centre = (k / n + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(k / n * (1 - k / n) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (layer["low"], layer["high"]) == pytest.approx((max(0, centre - half), min(1, centre + half)))
    pixels = np.asarray(Image.open(out / "nonlocal.png").convert("RGB"))
    assert pixels.reshape(-1, 3).std(axis=0).max() > 10 and (out / "nonlocal.png").stat().st_size < 100_000


def test_the_default_model_shows_more_non_local_latents_after_later_blocks(tmp_path, capsys):
    """The paper's trend on the shipped default, from the public command alone (a smaller sample than the
    README's: 300 images, 60 latents per layer)."""
    spec = pathlib.Path(__file__).resolve().parents[2] / "plugins/cafe-plugin-report/examples/nonlocal_toy.toml"
    out = tmp_path / "toy"
    assert main(["analyze", "nonlocal", str(spec), "--latents", "60", "--images", "300", "--out", str(out),
                 "--no-progress", "--device", "cpu"]) == 0
    layers = {row["layer"]: row for row in json.loads((out / "nonlocal.json").read_text())["layers"]}
    assert sorted(layers) == [0, 2, 3] and all(row["sampled"] == 60 for row in layers.values())
    assert layers[0]["high"] < layers[2]["share"] and layers[0]["high"] < layers[3]["share"]
