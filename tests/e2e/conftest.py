"""A small timm ViT with saved random weights, an SAE made here, and a folder of images."""

import numpy as np
import pytest
import torch
from PIL import Image

DEPTH, WIDTH, D_SAE, IMAGE, PATCH = 3, 32, 96, 32, 8


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
    """Paths of a ViT checkpoint, an SAE at layer 1 and five images of assorted sizes and modes."""
    import timm
    from cafe_sae import ReluSAE, save
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("assets")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=IMAGE, **backbone_kwargs())
    save_file(model.state_dict(), str(root / "vit.safetensors"))
    sae = ReluSAE.random_init(WIDTH, D_SAE, seed=0, layer=1)
    save(sae, root / "sae.safetensors")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, (size, mode) in enumerate([(32, "RGB"), (48, "RGB"), (40, "L"), (32, "RGBA"), (64, "RGB")]):
        pixels = rng.integers(0, 256, size=(size, size, len(mode) if mode != "L" else 1), dtype=np.uint8)
        Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode=mode).save(images / f"img{i}.png")
    return root


def backbone_kwargs():
    return {"patch_size": PATCH, "depth": DEPTH, "embed_dim": WIDTH, "num_heads": 2}


def e2e_spec(assets):
    """A complete spec over the assets, as a fresh dict."""
    return {
        "backbone": {
            "name": "timm",
            "model": "vit_tiny_patch16_224",
            "checkpoint": str(assets / "vit.safetensors"),
            "img_size": IMAGE,
            "model_kwargs": backbone_kwargs(),
        },
        "sae": {"name": "relu", "path": str(assets / "sae.safetensors"), "layer": 1},
        "dataset": {"name": "folder", "path": str(assets / "images")},
        "targets": {"select": "top", "count": 2, "token": "argmax"},
        "attributors": [{"name": "activation_map"}, {"name": "gradient_x_input"}],
        "metrics": [{"name": "insertion", "steps": 2}, {"name": "deletion", "steps": 2}],
        "run": {"batch_size": 2, "device": "cpu", "seed": 0},
    }


@pytest.fixture
def spec_dict(assets):
    """A complete spec over the assets (a fresh dict each test)."""
    return e2e_spec(assets)
