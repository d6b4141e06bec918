"""Per-row input gradients with a shared forward: every batching against a plain one-row-at-a-time loop."""

from __future__ import annotations

import pydantic
import pytest
import torch

from cafe_attnlrp.attributor import AttnLRP, CPLRP
from cafe_baselines.gradient_x_input import GradientXInput
from cafe_baselines.params import GradientXInputParams
from cafe_core.gradients import BATCHING, frozen, identical_rows, input_gradients
from cafe_core.protocols import RunContext, TargetFunction
from handbuilt import CountingBackbone, LinearReluSAE, TinyTimmViT

WIDTH = 32  # TinyTimmViT's token width


def _sae(d_sae: int = 96, seed: int = 0) -> LinearReluSAE:
    g = torch.Generator().manual_seed(seed)
    weights = torch.randn(d_sae, WIDTH, generator=g) / WIDTH**0.5
    return LinearReluSAE(weights, torch.randn(d_sae, generator=g) * 0.1, layer=1)


def _reference(backbone, sae, layer, x, latents, positions):
    """One row at a time, plain autograd: ``(z, dz/dx)`` per row."""
    zs, grads = [], []
    for i in range(len(x)):
        leaf = x[i : i + 1].clone().requires_grad_(True)
        h = backbone.forward_to(leaf, layer)[0, int(positions[i])]
        n = int(latents[i])
        z = torch.relu((h * sae.w_enc[n]).sum() + sae.b_enc[n])
        zs.append(z.detach())
        grads.append(torch.autograd.grad(z, leaf, allow_unused=True)[0] if z.requires_grad else torch.zeros_like(leaf))
    return torch.stack(zs), torch.cat([torch.zeros_like(x[:1]) if g is None else g for g in grads])


@pytest.fixture(scope="module")
def setting():
    """Three images: 45 latents at the class token and 6 at patch tokens of image 0, 3 rows of image 1, 1 of image 2.

    40 of image 0's class-token latents are active, more than the token's width (32), so ``"auto"`` takes
    its Jacobian there; the 5 inactive ones have a zero gradient.
    """
    backbone = TinyTimmViT()
    sae = _sae()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        at_class_token = sae.encode(backbone.forward_to(images[:1], 1))[0, 0]
    active, inactive = torch.nonzero(at_class_token > 0).flatten(), torch.nonzero(at_class_token == 0).flatten()
    image_rows = [0] * 51 + [1] * 3 + [2]
    latents = active[:40].tolist() + inactive[:5].tolist() + [40, 41, 42, 43, 44, 45] + [1, 2, 3] + [7]
    positions = [0] * 45 + [1, 2, 3, 3, 5, 16] + [0, 4, 4] + [9]
    order = torch.randperm(len(image_rows), generator=torch.Generator().manual_seed(2))  # rows interleaved
    x = images[torch.as_tensor(image_rows)][order]
    latents, positions = torch.as_tensor(latents)[order], torch.as_tensor(positions)[order]
    return backbone, sae, x, latents, positions


@pytest.mark.parametrize("batching", BATCHING)
def test_every_batching_gives_the_gradients_of_one_row_at_a_time(setting, batching):
    backbone, sae, x, latents, positions = setting
    target = TargetFunction(backbone, sae, 1, latents, positions)
    z, grad = _reference(backbone, sae, 1, x, latents, positions)
    assert (z == 0).any() and (z > 0).sum() > WIDTH  # inactive rows, and enough active ones for the Jacobian

    out = input_gradients(target, x, RunContext(batch_size=8), batching=batching)

    torch.testing.assert_close(out.z, z, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.inputs, grad, rtol=1e-4, atol=1e-6)
    assert out.inputs[z == 0].abs().max() == 0
    picked = torch.stack([backbone.forward_to(x[i : i + 1], 1)[0, int(k)] for i, k in enumerate(positions)]).detach()
    torch.testing.assert_close(out.token, picked)
    expected_cotangent = sae.w_enc[latents] * (z > 0)[:, None]  # d relu(w.h + b) / dh
    torch.testing.assert_close(out.token_grad, expected_cotangent)


def test_extra_leaves_get_each_rows_gradient(setting):
    # An extra leaf added to the tokens: its gradient per image row is dz/dh summed over the token's channels.
    backbone, sae, x, latents, positions = setting
    probe: dict[str, torch.Tensor] = {}

    class ProbedBackbone(CountingBackbone):
        def forward_to(self, x, layer):
            return super().forward_to(x, layer) + probe["t"][:, None, None]

    target = TargetFunction(ProbedBackbone(backbone), sae, 1, latents, positions)

    def leaf(n: int) -> list[torch.Tensor]:
        probe["t"] = x.new_zeros(n, requires_grad=True)
        return [probe["t"]]

    results = [input_gradients(target, x, RunContext(batch_size=8), batching=b, extra_leaves=leaf) for b in BATCHING]
    for out in results:
        torch.testing.assert_close(out.extras[0], out.token_grad.sum(1), rtol=1e-5, atol=1e-6)


def test_rows_of_one_image_share_one_forward_and_batches_stay_bounded(setting):
    backbone, sae, x, latents, positions = setting
    counting = CountingBackbone(backbone)
    input_gradients(TargetFunction(counting, sae, 1, latents, positions), x, RunContext(batch_size=8), batching="auto")
    assert sorted(counting.calls) == [1, 4]  # image 0 (51 rows) is shared; images 1 and 2 have too few rows
    counting.calls.clear()
    input_gradients(TargetFunction(counting, sae, 1, latents, positions), x, RunContext(batch_size=8), batching="rows")
    assert counting.calls == [8] * 6 + [7]


def test_identical_rows_groups_exact_copies_only():
    a, b = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    nearly_a = a.clone()
    nearly_a[1, 2, 3] += 1e-6
    first, group = identical_rows(torch.stack([a, b, a, nearly_a, b]))
    assert first.tolist() == [0, 1, 3]
    assert group.tolist() == [0, 1, 0, 2, 1]


def test_frozen_restores_each_parameters_flag_also_after_an_error():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[1].bias.requires_grad_(False)
    before = [p.requires_grad for p in model.parameters()]
    with pytest.raises(RuntimeError, match="inside"):
        with frozen(model, "not a module"):
            assert not any(p.requires_grad for p in model.parameters())
            raise RuntimeError("inside")
    assert [p.requires_grad for p in model.parameters()] == before


def test_unknown_batching_is_refused_with_the_choices(setting):
    backbone, sae, x, latents, positions = setting
    with pytest.raises(ValueError, match="auto, rows, shared, jacobian"):
        input_gradients(TargetFunction(backbone, sae, 1, latents, positions), x, RunContext(), batching="tiles")
    with pytest.raises(pydantic.ValidationError, match="'auto', 'rows', 'shared' or 'jacobian'"):
        GradientXInputParams(batching="tiles")


@pytest.mark.parametrize("attributor", [GradientXInput, AttnLRP, CPLRP])
def test_attributors_give_the_same_maps_and_info_under_every_batching(setting, attributor):
    backbone, sae, x, latents, positions = setting
    target = TargetFunction(backbone, sae, 1, latents, positions)
    results = [attributor(batching=b).attribute(target, x, RunContext(batch_size=8)) for b in BATCHING]
    for other in results[1:]:
        torch.testing.assert_close(other.heatmap, results[0].heatmap, rtol=1e-4, atol=1e-5)
        assert other.info.keys() == results[0].info.keys()
        for key in results[0].info:
            torch.testing.assert_close(other.info[key], results[0].info[key], rtol=1e-4, atol=1e-5)
    if attributor is CPLRP:  # conservation holds whichever way the rows were batched
        for result in results:
            assert result.info["conservation_error"].abs().max() < 1e-4


def test_auto_shares_from_two_rows_on_a_large_layer_and_from_many_on_a_small_one():
    from types import SimpleNamespace

    from cafe_core.gradients import LARGE_ACTIVATION, SMALL_MODEL_SHARED_FROM, shared_from

    vit_small = SimpleNamespace(grid_size=(14, 14), prefix_tokens=("cls",), width=384)  # 197 x 384 elements
    tiny = TinyTimmViT()  # 17 tokens x 32
    assert 197 * 384 >= LARGE_ACTIVATION > 17 * 32
    assert shared_from(TargetFunction(vit_small, _sae(), 0, [0], [0])) == 2
    assert shared_from(TargetFunction(tiny, _sae(), 1, [0], [0])) == SMALL_MODEL_SHARED_FROM > 3
    # On a GPU a batch of repeated images beats the batched backward at any size: never shared.
    assert shared_from(TargetFunction(vit_small, _sae(), 0, [0], [0]), torch.device("cuda")) == float("inf")
    assert shared_from(TargetFunction(vit_small, _sae(), 0, [0], [0]), torch.device("cpu")) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("batching", BATCHING)
def test_every_batching_on_cuda_matches_the_cpu(setting, batching, monkeypatch):
    from cafe_sae import ReluSAE

    # cuDNN convolves in TensorFloat-32 by default (10-bit mantissa): the patch embedding alone then moves the
    # gradients by about 1e-4. The batching, not the number format, is under test here.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)

    backbone, _, x, latents, positions = setting
    sae = ReluSAE.random_init(WIDTH, 96, seed=0, layer=1, tokens="all")
    on_cpu = input_gradients(TargetFunction(backbone, sae, 1, latents, positions), x, RunContext(batch_size=8),
                             batching=batching)
    cuda_backbone = TinyTimmViT()
    cuda_backbone.model.cuda()
    cuda_backbone.mean, cuda_backbone.std = cuda_backbone.mean.cuda(), cuda_backbone.std.cuda()
    target = TargetFunction(cuda_backbone, sae.cuda(), 1, latents, positions)
    on_cuda = input_gradients(target, x.cuda(), RunContext(batch_size=8, device=torch.device("cuda")),
                              batching=batching)
    torch.testing.assert_close(on_cuda.inputs.cpu(), on_cpu.inputs, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(on_cuda.z.cpu(), on_cpu.z, rtol=1e-4, atol=1e-6)
