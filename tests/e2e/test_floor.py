"""The relative floor of target selection in a run: statuses against an independent forward, the summary's
count, the scales kept in the store for a resumed run, and the same draws as a run without the floor."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import cafe_core
from cafe_core.plugins import PluginHost
from cafe_core.store import RunStore

pytestmark = pytest.mark.slow

FLOOR = 0.5


def _patch_latents(spec_dict, assets, folder):
    """``{image_id: [patches, d_sae]}``: every patch token's latents, from timm and the SAE's formula."""
    import timm
    from cafe_sae import load
    from safetensors.torch import load_file

    host = PluginHost()
    backbone = host.registry("backbone").get("timm").build(
        {k: v for k, v in spec_dict["backbone"].items() if k != "name"}
    )
    dataset = host.registry("dataset").get("folder").build({"path": str(folder)})
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3, embed_dim=32, num_heads=2)
    model.load_state_dict(load_file(str(assets / "vit.safetensors")))
    model.eval()
    sae = load(assets / "sae.safetensors")
    out = {}
    for i in range(len(dataset)):
        item = dataset[i]
        captured = {}
        handle = model.blocks[1].register_forward_hook(lambda m, a, o: captured.setdefault("h", o))
        with torch.no_grad():
            model(backbone.preprocess([item.image]))
            out[item.image_id] = torch.relu((captured["h"][0, 1:] - sae.b_d) @ sae.W_e.T + sae.b_e).numpy()
        handle.remove()
    return out


def _spec(spec_dict, folder, floor):
    spec_dict["dataset"] = {"name": "folder", "path": str(folder)}
    spec_dict["targets"] = {"select": "random", "count": 6, "token": "argmax", "min_relative_activation": floor}
    spec_dict["attributors"] = [{"name": "activation_map"}]
    spec_dict["metrics"] = [{"name": "insertion", "steps": 4}]
    return spec_dict


def test_targets_below_their_share_of_the_latents_largest_value_are_counted_not_explained(spec_dict, assets, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(assets / "images", folder)
    spec = _spec(spec_dict, folder, FLOOR)
    results = cafe_core.run(spec, tmp_path / "run")

    codes = _patch_latents(spec, assets, folder)
    scale = np.max([c.max(axis=0) for c in codes.values()], axis=0)  # each latent over every patch and image
    statuses = {}
    for t in results.targets:
        expected = "below_floor" if t["activation"] < FLOOR * scale[t["latent"]] else "explained"
        assert t["status"] == expected, t
        statuses[expected] = statuses.get(expected, 0) + 1
    assert statuses.get("below_floor", 0) > 0 and statuses.get("explained", 0) > 0
    explained = {(t["image_id"], t["latent"], t["position"]) for t in results.targets if t["status"] == "explained"}
    assert {(r["image_id"], r["latent"], r["position"]) for r in results.rows} == explained
    assert results.format_summary().splitlines()[-1] == (
        f"{len(results.targets)} targets considered, 0 skipped as inactive, "
        f"{statuses['below_floor']} below the floor (min_relative_activation)"
    )

    # The floor decides what is explained, never what is drawn: a run without it draws the same latents.
    without = cafe_core.run(_spec(spec_dict, folder, 0.0), tmp_path / "without")
    assert sorted(t["latent"] for t in without.targets) == sorted(t["latent"] for t in results.targets)
    assert {t["status"] for t in without.targets} == {"explained"}

    # An image added later is judged by the scales of the run as it started, kept in the store.
    with RunStore.open_existing(tmp_path / "run") as store:
        kept = store.get_meta("activation_scales")
    np.testing.assert_allclose(kept["relu"][0], scale, rtol=1e-5, atol=1e-7)
    pixels = np.asarray(Image.open(folder / "img0.png").convert("RGB")).copy()
    Image.fromarray(255 - pixels).save(folder / "img9.png")
    resumed = cafe_core.run(_spec(spec_dict, folder, FLOOR), tmp_path / "run")
    with RunStore.open_existing(tmp_path / "run") as store:
        assert store.get_meta("activation_scales") == kept
    added = [t for t in resumed.targets if t["image_id"] == "img9.png"]
    assert added
    for t in added:
        expected = "below_floor" if t["activation"] < FLOOR * kept["relu"][0][t["latent"]] else "explained"
        assert t["status"] == expected
