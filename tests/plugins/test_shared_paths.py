"""Integrated gradients and GradientSHAP over many latents of one image: Captum per latent is the reference."""

from __future__ import annotations

import pydantic
import pytest
import torch

from cafe_captum.gradient_shap import GradientShap
from cafe_captum.integrated_gradients import IntegratedGradients, latent_onset
from cafe_captum.params import GradientShapParams, IntegratedGradientsParams
from cafe_captum.rng import seeded_global_rng
from cafe_core.patches import pixels_to_patches
from cafe_core.protocols import RunContext, TargetFunction
from cafe_sae import ReluSAE
from handbuilt import CountingBackbone, TinyTimmViT

LAYER = 1
PATCH = (8, 8)


@pytest.fixture(scope="module")
def setting():
    """Rows 0-4: five latents of image 0, rows 5-6: two of image 1, interleaved.

    At image 0's class token, rows 0 and 1 are on at the zero blank (onset 0), rows 2-4 off there and on at
    the image (each its own onset), so that from the onset rows 0 and 1 share a path and the others do not.
    """
    backbone = TinyTimmViT(seed=0)
    sae = ReluSAE.random_init(32, 64, seed=0, layer=LAYER, tokens="all")
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        at_image = sae.encode(backbone.forward_to(images, LAYER))[:, 0]
        at_blank = sae.encode(backbone.forward_to(torch.zeros_like(images), LAYER))[0, 0]
    both_on = torch.nonzero((at_image[0] > 0) & (at_blank > 0)).flatten()
    turning_on = torch.nonzero((at_image[0] > 0) & (at_blank == 0)).flatten()
    on_at_image_1 = torch.nonzero(at_image[1] > 0).flatten()
    assert len(both_on) >= 2 and len(turning_on) >= 3 and len(on_at_image_1) >= 2
    latents = both_on[:2].tolist() + turning_on[:3].tolist() + on_at_image_1[:2].tolist()
    image_of_row = [0] * 5 + [1] * 2
    order = [0, 5, 1, 2, 6, 3, 4]
    x = images[[image_of_row[i] for i in order]]
    latents = torch.tensor([latents[i] for i in order])
    positions = torch.zeros(len(order), dtype=torch.long)
    return backbone, sae, x, latents, positions


def _scalar(backbone, sae, latent: int, position: int, quantity: str = "post"):
    """``x [N, 3, H, W] -> [N]``: one latent (or its pre-activation) read from the full SAE codes."""

    def f(x: torch.Tensor) -> torch.Tensor:
        h = backbone.forward_to(x, LAYER)[:, position]
        return (sae.encode(h) if quantity == "post" else sae.pre_activation(h))[:, latent]

    return f


def _captum_ig(setting, method: IntegratedGradients) -> dict[str, torch.Tensor]:
    """Heatmaps and info of Captum's integrated gradients, called on each row's own scalar function."""
    from captum.attr import IntegratedGradients as CaptumIG

    backbone, sae, x, latents, positions = setting
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ["heatmap", "delta", "value", "blank_value", "onset"]}
    for i in range(len(x)):
        f = _scalar(backbone, sae, int(latents[i]), int(positions[i]), method.quantity)
        image, blank = x[i : i + 1], torch.zeros_like(x[i : i + 1])
        with torch.no_grad():
            value, blank_value = f(image), f(blank)
        onset = torch.zeros(1)
        if method.quantity == "post" and method.start == "onset":
            onset = latent_onset(f, blank, image, value, blank_value)
        start = blank + onset * (image - blank)
        attribution = CaptumIG(f).attribute(image, baselines=start, n_steps=method.n_steps, method=method.method)
        out["heatmap"].append(pixels_to_patches(attribution.detach().sum(1), PATCH))
        out["delta"].append(attribution.detach().sum().reshape(1) - (value - blank_value))
        out["value"].append(value)
        out["blank_value"].append(blank_value)
        out["onset"].append(onset)
    return {k: torch.cat(v) for k, v in out.items()}


def _one_row_at_a_time(setting, method, context: RunContext) -> dict[str, torch.Tensor]:
    backbone, sae, x, latents, positions = setting
    target = TargetFunction(backbone, sae, LAYER, latents, positions)
    results = [method.attribute(target.select([i]), x[i : i + 1], context) for i in range(len(x))]
    merged = {"heatmap": torch.cat([r.heatmap for r in results])}
    for key in results[0].info:
        merged[key] = torch.cat([r.info[key] for r in results])
    return merged


def _close(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    for key, expected in reference.items():
        torch.testing.assert_close(ours[key], expected, rtol=1e-4, atol=1e-6, msg=key)


IG_CASES = {
    "blank_gausslegendre": dict(start="blank", method="gausslegendre"),
    "blank_riemann_trapezoid": dict(start="blank", method="riemann_trapezoid"),
    "onset_mixed": dict(start="onset", method="gausslegendre"),
    "pre": dict(quantity="pre", method="riemann_trapezoid"),
}


@pytest.mark.parametrize("batching", ["shared", "rows", "auto"])
@pytest.mark.parametrize("case", IG_CASES, ids=list(IG_CASES))
def test_integrated_gradients_of_many_latents_of_one_image_match_captum_per_latent(setting, case, batching):
    backbone, sae, x, latents, positions = setting
    method = IntegratedGradients(n_steps=6, batching=batching, **IG_CASES[case])
    context = RunContext(batch_size=4)  # below K x n_steps = 30: the shared points take two passes
    out = method.attribute(TargetFunction(backbone, sae, LAYER, latents, positions), x, context)
    ours = {"heatmap": out.heatmap, **out.info}
    reference = _captum_ig(setting, method)
    if case == "onset_mixed":
        onsets = reference["onset"][[0, 2, 3, 5, 6]]  # image 0's rows in the interleaved order
        assert (onsets == 0).sum() == 2 and len(set(onsets[onsets > 0].tolist())) == 3
    _close(ours, reference)
    _close(ours, _one_row_at_a_time(setting, method, context))
    change = (reference["value"] - reference["blank_value"]).abs()
    torch.testing.assert_close(out.info["relative_delta"], reference["delta"].abs() / change, rtol=1e-3, atol=1e-6)


def _captum_gradient_shap(setting, method: GradientShap, context: RunContext) -> torch.Tensor:
    """Captum's GradientSHAP per row, seeded per row, in groups of at most ``batch_size`` samples."""
    from captum.attr import GradientShap as CaptumGradientShap

    backbone, sae, x, latents, positions = setting
    heatmaps = []
    for i in range(len(x)):
        captum = CaptumGradientShap(_scalar(backbone, sae, int(latents[i]), int(positions[i])))
        image = x[i : i + 1]
        blank = image.mean(dim=(2, 3), keepdim=True).expand_as(image)
        total = torch.zeros_like(image)
        with seeded_global_rng(context.seed):
            for start in range(0, method.n_samples, context.batch_size):
                size = min(context.batch_size, method.n_samples - start)
                total += size * captum.attribute(image, baselines=blank, n_samples=size, stdevs=method.stdevs)
        heatmaps.append(pixels_to_patches((total / method.n_samples).detach().sum(1), PATCH))
    return torch.cat(heatmaps)


@pytest.mark.parametrize("batching", ["shared", "rows", "auto"])
@pytest.mark.parametrize("batch_size", [3, 64])
def test_gradient_shap_of_many_latents_of_one_image_matches_captum_per_latent(setting, batching, batch_size):
    backbone, sae, x, latents, positions = setting
    method = GradientShap(n_samples=5, stdevs=0.2, blank="mean", batching=batching)
    context = RunContext(batch_size=batch_size, seed=7)
    out = method.attribute(TargetFunction(backbone, sae, LAYER, latents, positions), x, context)
    expected = _captum_gradient_shap(setting, method, context)
    assert out.heatmap.abs().max() > 0
    torch.testing.assert_close(out.heatmap, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.heatmap, _one_row_at_a_time(setting, method, context)["heatmap"],
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "method, points",
    [(IntegratedGradients(n_steps=6, start="blank", batching="shared"), 6),
     (GradientShap(n_samples=6, stdevs=0.1, batching="shared"), 6)],
    ids=["integrated_gradients", "gradient_shap"],
)
def test_latents_of_one_image_cost_the_points_of_one_path(setting, method, points):
    backbone, sae, x, latents, positions = setting
    counting = CountingBackbone(backbone)
    rows = [0, 2, 3, 5, 6]  # image 0's five latents
    target = TargetFunction(counting, sae, LAYER, latents[rows], positions[rows])
    method.attribute(target, x[rows], RunContext(batch_size=64))
    forwarded = sum(counting.calls)
    ends = 2 if isinstance(method, IntegratedGradients) else 0  # its values at the image and at the blank
    assert forwarded == points + ends  # not 5 x points
    counting.calls.clear()
    type(method)(**{**vars(method), "batching": "rows"}).attribute(target, x[rows], RunContext(batch_size=64))
    assert sum(counting.calls) == 5 * points + ends


def test_the_onsets_of_latents_of_one_image_forward_their_common_points_once(setting):
    backbone, sae, x, latents, positions = setting
    rows = [0, 2, 3, 5, 6]  # image 0's five latents: two on at the blank, three turning on along the path
    image, blank = x[:1], torch.zeros_like(x[:1])
    searched: list[torch.Tensor] = []  # every point the search of each row looks at, one row at a time
    for row in rows:
        f = _scalar(backbone, sae, int(latents[row]), int(positions[row]))

        def recording(points: torch.Tensor, f=f) -> torch.Tensor:
            searched.append(points)
            return f(points)

        with torch.no_grad():
            latent_onset(recording, blank, image, f(image), f(blank))
    distinct = len(torch.unique(torch.cat(searched).flatten(1), dim=0))
    assert len(torch.cat(searched)) == 3 * 23 and 7 + 16 <= distinct < 3 * 23

    counting = CountingBackbone(backbone)
    target = TargetFunction(counting, sae, LAYER, latents[rows], positions[rows])
    out = IntegratedGradients(n_steps=6, batching="shared").attribute(target, x[rows], RunContext(batch_size=64))
    # One path shared by the two rows on at the blank, three others.
    assert (out.info["onset"] == 0).sum() == 2
    assert sum(counting.calls) == 2 + distinct + 4 * 6  # the values at both ends, the onsets, the paths


def test_path_batching_refuses_the_jacobian_with_the_choices(setting):
    backbone, sae, x, latents, positions = setting
    target = TargetFunction(backbone, sae, LAYER, latents, positions)
    for method in (IntegratedGradients(n_steps=2, batching="jacobian"), GradientShap(n_samples=2, batching="jacobian")):
        with pytest.raises(ValueError, match="auto, rows, shared"):
            method.attribute(target, x, RunContext())
    for params in (IntegratedGradientsParams, GradientShapParams):
        with pytest.raises(pydantic.ValidationError, match="'auto', 'rows' or 'shared'"):
            params(batching="jacobian")
        assert params(batching="shared").batching == "shared"
