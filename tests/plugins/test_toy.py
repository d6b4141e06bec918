"""The embedded default: shipped weights load and perform as recorded; the training code trains."""

import json
import pathlib

import pytest
import torch

from cafe_core.plugins import PluginHost
from cafe_core.testing import check_sae

LOGS = pathlib.Path(__file__).resolve().parents[2] / "plugins" / "cafe-plugin-toy" / "training" / "logs"


@pytest.fixture(scope="module")
def host():
    return PluginHost()


@pytest.fixture(scope="module")
def toy_vit(host):
    return host.registry("backbone").get("toy_vit").build({})


def test_shipped_vit_reaches_its_recorded_accuracy_on_fresh_images(toy_vit):
    from cafe_shapes import ShapesDataset
    from cafe_toy.vit_training import evaluate

    recorded = json.loads((LOGS / "vit_log.json").read_text())["final_validation"]["image"]
    images, labels, _ = ShapesDataset(800, seed=7).tensors()  # a seed neither training nor validation used
    accuracy = evaluate(toy_vit, images, labels)["image"]
    # 800 images: one standard error of an accuracy near 0.84 is 0.013
    assert accuracy > recorded - 0.05
    assert accuracy > 0.25 + 0.4  # far above the 4-class chance level


@pytest.mark.parametrize("layer, tokens", [(0, "patch"), (2, "patch"), (3, "patch"), (3, "cls")])
def test_shipped_saes_load_conform_and_are_alive(host, toy_vit, layer, tokens):
    from cafe_shapes import ShapesDataset

    sae = host.registry("sae").get("toy_sae").build({"layer": layer, "tokens": tokens})
    assert (sae.layer, sae.tokens, sae.site, sae.d_in) == (layer, tokens, "resid_post", toy_vit.width)
    images, _, _ = ShapesDataset(256, seed=7).tensors()
    with torch.no_grad():
        activations = toy_vit.forward_to(toy_vit.preprocess(list(images)), layer)
    h = activations[:, 0] if tokens == "cls" else activations[:, 1:].reshape(-1, activations.shape[-1])
    codes = check_sae(sae, h)
    alive = (codes > 0).any(0).float().mean().item()
    assert alive > 0.5, f"only {alive:.0%} of the latents fire on 256 images"
    reconstruction = sae.decode(codes)
    fve = 1 - ((h - reconstruction) ** 2).sum() / ((h - h.mean(0)) ** 2).sum()
    assert fve > 0.7


def test_unshipped_sae_is_refused_with_the_available_ones(host):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"no shipped SAE for layer=1.*available: \(layer=0, tokens='patch'\)"):
        host.registry("sae").get("toy_sae").validate({"layer": 1})


def test_old_site_param_still_picks_the_shipped_sae_with_a_warning(host):
    with pytest.warns(DeprecationWarning, match='write `tokens = "cls"`'):
        params = host.registry("sae").get("toy_sae").validate({"layer": 3, "site": "cls"})
    assert (params.layer, params.tokens) == (3, "cls")


@pytest.mark.parametrize("layer, tokens", [(0, "patch"), (2, "patch"), (3, "patch"), (3, "cls")])
def test_shipped_version1_files_give_bit_identical_latents(host, layer, tokens):
    """The shipped files predate format version 2; they must load unchanged and encode as they always did."""
    import json
    import struct

    from safetensors.torch import load_file

    from cafe_toy.assets import sae_path

    path = sae_path(layer, tokens)
    with open(path, "rb") as handle:
        header = json.loads(handle.read(struct.unpack("<Q", handle.read(8))[0]))
    config = json.loads(header["__metadata__"]["cafe_sae"])
    assert (config["format_version"], config["site"]) == (1, tokens)
    w = load_file(str(path))
    sae = host.registry("sae").get("toy_sae").build({"layer": layer, "tokens": tokens})
    h = torch.randn(64, w["W_e"].shape[1], generator=torch.Generator().manual_seed(layer)) * 3 + 1
    expected = torch.relu(torch.nn.functional.linear(h - w["b_d"], w["W_e"], w["b_e"]))
    assert torch.equal(sae.encode(h), expected)
    rows = torch.arange(64) % w["W_e"].shape[0]
    one_row_each = torch.einsum("nd,nd->n", h - w["b_d"], w["W_e"][rows]) + w["b_e"][rows]
    assert torch.equal(sae.encode_latents(h, rows), torch.relu(one_row_each))


def test_vit_training_lowers_the_loss_and_saved_weights_reload(tmp_path):
    from cafe_timm.vit import TimmViT
    from cafe_toy.assets import MODEL
    from cafe_toy.vit_training import ViTTrainingConfig, save_vit, train_vit

    kwargs = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "num_classes": 4}
    config = ViTTrainingConfig(
        model=MODEL, model_kwargs=kwargs, steps=40, batch_size=32, lr=3e-3, train_images=512,
        validation_images=64, evaluate_every=1000, log_every=1,
    )
    result = train_vit(config)
    losses = [record["loss"] for record in result.log["history"]]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    path = save_vit(result, tmp_path)
    reloaded = TimmViT(MODEL, img_size=32, model_kwargs=kwargs, checkpoint=path)
    trained = result.backbone.model
    with torch.no_grad():
        for parameter in trained.parameters():  # the file stores float16
            parameter.copy_(parameter.half().float())
        x = torch.randn(2, 3, 32, 32)
        assert torch.equal(reloaded.model(x), trained(x))
    assert json.loads((tmp_path / "vit_log.json").read_text())["config"]["steps"] == 40
