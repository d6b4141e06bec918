"""A timm ViT's last block computed at a few tokens: the same values as the whole block, or the whole block."""

import warnings

import pytest
import torch

from cafe_core.plugins import PluginHost
from cafe_core.protocols import RunContext, TargetFunction
from cafe_core.shared_forward import latents_on_shared_images

VARIANTS = {
    "plain": {},
    "layer scale, qk norm, registers": {"init_values": 0.1, "qk_norm": True, "reg_tokens": 2},
    "no class token": {"class_token": False, "global_pool": "avg", "fc_norm": False},
}


def _backbone(model_kwargs=None, **params):
    torch.manual_seed(0)
    kwargs = {"patch_size": 8, "depth": 3, "embed_dim": 32, "num_heads": 2, **(model_kwargs or {})}
    return PluginHost().registry("backbone").get("timm").build(
        {"model": "vit_tiny_patch16_224", "img_size": 32, "model_kwargs": kwargs, **params}
    )


def _images(n=3):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("final_norm", ["none", "all"])
def test_tokens_at_a_few_positions_equal_the_whole_forward(variant, final_norm):
    backbone = _backbone(VARIANTS[variant], final_norm=final_norm)
    x = _images()
    positions = torch.tensor([0, 5, 15])
    for layer in range(backbone.depth):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the first call's own check must find them equal
            rows = backbone.forward_to_tokens(x, layer, positions)
        torch.testing.assert_close(rows, backbone.forward_to(x, layer)[:, positions], rtol=1e-5, atol=1e-6)


def test_unfused_attention_gives_the_same_rows():
    backbone = _backbone()
    for block in backbone.model.blocks:
        block.attn.fused_attn = False
    x = _images()
    torch.testing.assert_close(
        backbone.forward_to_tokens(x, 2, torch.tensor([3])), backbone.forward_to(x, 2)[:, [3]], rtol=1e-5, atol=1e-6
    )


def test_a_hooked_block_runs_whole():
    backbone = _backbone()
    seen = []
    backbone.model.blocks[2].mlp.register_forward_hook(lambda module, args, out: seen.append(out.shape[1]))
    backbone.forward_to_tokens(_images(), 2, torch.tensor([1, 2]))
    assert seen == [backbone.num_tokens]  # the hook saw every token, as in a plain forward


def test_a_block_that_differs_from_its_rows_is_reported_and_then_run_whole(monkeypatch):
    import cafe_timm.vit as vit

    backbone = _backbone()
    x = _images()
    monkeypatch.setattr(vit, "block_rows", lambda block, h, rows: torch.zeros(h.shape[0], len(rows), h.shape[2]))
    with pytest.warns(RuntimeWarning, match="block 1 .* differs from the whole block"):
        backbone.forward_to_tokens(x, 1, torch.tensor([2]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, and the right values from the whole block
        torch.testing.assert_close(backbone.forward_to_tokens(x, 1, torch.tensor([2])), backbone.forward_to(x, 1)[:, [2]])


def test_curve_readers_get_the_same_latents_through_the_rows():
    backbone = _backbone()
    sae = PluginHost().registry("sae").get("random").build({"d_in": 32, "d_sae": 64, "layer": 2, "seed": 0})
    readers = TargetFunction(backbone, sae, 2, [3, 7, 7, 11, 5], [1, 4, 4, 16, 9])
    image_of_reader = torch.tensor([0, 0, 2, 1, 2])
    images = _images()
    z = latents_on_shared_images(readers, image_of_reader, 3, lambda rows: images[rows], RunContext(batch_size=2))
    expected = torch.stack([
        sae.encode(backbone.forward_to(images[i : i + 1], 2))[0, int(p), int(n)]
        for n, p, i in zip(readers.latents, readers.positions, image_of_reader)
    ])
    torch.testing.assert_close(z, expected, rtol=1e-5, atol=1e-6)


def test_the_rows_do_not_depend_on_the_thread_count():
    """A run gives the same bits in-process and on a one-CPU worker (the Ray executor relies on it)."""
    backbone = PluginHost().registry("backbone").get("toy_vit").build({})  # big enough for threads to split
    x = torch.randn(40, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(backbone.forward_to_tokens(x, 3, torch.tensor([17, 30])))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1])


def test_under_autocast_the_first_check_allows_the_lower_precision():
    backbone = _backbone()
    x = _images()
    with warnings.catch_warnings(), torch.autocast("cpu", dtype=torch.bfloat16):
        warnings.simplefilter("error")
        rows = backbone.forward_to_tokens(x, 2, torch.tensor([3, 7]))
        whole = backbone.forward_to(x, 2)[:, [3, 7]]
    assert not torch.equal(rows, whole)  # lowered: two orders of the sums round differently
    torch.testing.assert_close(rows.float(), whole.float(), rtol=0.1, atol=0.1)
