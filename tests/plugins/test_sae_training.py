"""Tests of SAE training: activation shards, the trainer, checkpoints, the training spec and ``cafe train-sae``."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from cafe_core.cli import main
from cafe_core.errors import SpecError
from cafe_core.plugins import PluginHost
from cafe_sae import ReluSAE, TopKSAE, load, save
from cafe_sae.training import (
    ActivationManifest,
    ActivationStore,
    ActivationStoreError,
    TrainingError,
    collect_activations,
    evaluate_sae,
    fraction_of_variance_explained,
    geometric_median,
    load_training_spec,
    mean_l0,
    prepare_training,
    read_metrics_log,
    train_from_spec,
    train_sae,
    write_activations,
)
from cafe_sae.training.trainer import held_out_tokens

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

D, ATOMS, ACTIVE = 16, 24, 3
RELU = {"architecture": "relu", "d_sae": 48, "l1_coefficient": 0.1, "lr": 1e-2, "batch_size": 64, "eval_tokens": 500}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices run fastest on one thread; several threads on busy cores can be many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sparse_tokens(n: int, seed: int = 0) -> np.ndarray:
    """Each token is an offset plus ACTIVE of ATOMS random unit directions with magnitudes in [0.5, 2].

    The directions are the first draw of the seeded generator.
    """
    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((ATOMS, D))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    chosen = np.argsort(rng.random((n, ATOMS)), axis=1)[:, :ACTIVE]
    magnitudes = rng.uniform(0.5, 2.0, (n, ACTIVE))
    return (np.einsum("na,nad->nd", magnitudes, atoms[chosen]) + 0.5).astype(np.float32)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """3000 sparse tokens in shards of 500, as layer 1 patch activations."""
    folder = tmp_path_factory.mktemp("synthetic") / "activations"
    tokens = sparse_tokens(3000)
    write_activations(tokens, folder, layer=1, tokens="patch", shard_tokens=500)
    return folder, tokens


# -- metrics ------------------------------------------------------------------------------------------------------


def test_fraction_of_variance_explained_on_a_hand_computed_case():
    h = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    h_hat = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    # mean (2, 1); total variance (1 + 1) + (1 + 1) = 4; error (0 + 1) + (1 + 0) = 2
    assert fraction_of_variance_explained(h, h_hat) == pytest.approx(0.5)
    assert fraction_of_variance_explained(h, h) == 1.0
    assert fraction_of_variance_explained(h, h.mean(dim=0).expand(2, 2)) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="do not vary"):
        fraction_of_variance_explained(torch.ones(3, 2), torch.zeros(3, 2))


def test_evaluate_sae_on_a_hand_made_sae():
    sae = ReluSAE(2, 3)
    with torch.no_grad():
        sae.W_e.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        sae.W_d.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    h = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    # z = [[1, 0, 0], [3, 2, 0]], h_hat = [[1, 0], [3, 0]]; error 0 + 4 = 4 of total variance 4
    metrics = evaluate_sae(sae, h, batch_size=1)
    assert metrics.fve == pytest.approx(0.0)
    assert metrics.l0 == pytest.approx(1.5)
    assert metrics.mse == pytest.approx(2.0)
    assert (metrics.dead_latents, metrics.dead_fraction, metrics.tokens) == (1, pytest.approx(1 / 3), 2)
    assert mean_l0(torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 3.0]])) == pytest.approx(1.5)


def test_geometric_median_against_known_cases():
    collinear = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]], dtype=torch.float64)
    expected = torch.tensor([1.0, 0.0], dtype=torch.float64)  # the middle point
    torch.testing.assert_close(geometric_median(collinear), expected, atol=1e-5, rtol=0)
    square = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0], [100.0, 100.0]])
    median = geometric_median(square)
    assert median.dtype == torch.float32
    # The outlier pulls the mean to (20.8, 20.8). The median lies on the diagonal at (t, t), where the unit
    # vectors towards the points sum to zero: 2 (2t - 2) / sqrt(2t^2 - 4t + 4) = sqrt(2), so t = 1 + 1/sqrt(3).
    t = 1 + 3**-0.5
    torch.testing.assert_close(median, torch.tensor([t, t]), atol=1e-5, rtol=0)


# -- activation shards and the reader -----------------------------------------------------------------------------


def test_written_shards_respect_shard_tokens_and_read_back(tmp_path):
    tokens = sparse_tokens(23)
    manifest = write_activations(tokens, tmp_path / "acts", layer=2, shard_tokens=5)
    assert [s.tokens for s in manifest.shards] == [5, 5, 5, 5, 3]
    store = ActivationStore(tmp_path / "acts")
    assert (store.num_tokens, store.d_in, store.manifest.layer) == (23, D, 2)
    np.testing.assert_array_equal(store.read(0, 23), tokens)
    np.testing.assert_array_equal(store.read(3, 12), tokens[3:12])
    sample = store.sample(7, seed=1, stop=20)
    assert len({row.tobytes() for row in sample}) == 7
    assert all(any(np.array_equal(row, t) for t in tokens[:20]) for row in sample)
    with pytest.raises(ActivationStoreError, match="already holds activations"):
        write_activations(tokens, tmp_path / "acts", layer=2)


def test_batches_visit_every_training_token_once_per_epoch_in_a_seeded_order(tmp_path):
    tokens = np.arange(60, dtype=np.float32)[:, None].repeat(2, axis=1)
    write_activations(tokens, tmp_path / "acts", layer=0, shard_tokens=7)
    store = ActivationStore(tmp_path / "acts")

    def first_epoch(seed):
        stream = store.batches(5, seed=seed, stop=50, shards_in_memory=2)
        return np.concatenate([next(stream).numpy() for _ in range(10)])[:, 0]

    epoch = first_epoch(3)
    assert sorted(epoch) == list(range(50))  # held-out tokens 50..59 never appear
    assert list(epoch) != list(range(50))
    np.testing.assert_array_equal(first_epoch(3), epoch)
    assert list(first_epoch(4)) != list(epoch)
    # a batch of 8 runs across the end of a group and of the epoch; resuming after k batches skips k * 8 tokens
    stream = [b.numpy() for _, b in zip(range(12), store.batches(8, seed=3, stop=50, shards_in_memory=2))]
    resumed = [b.numpy() for _, b in zip(range(5), store.batches(8, seed=3, start=7 * 8, stop=50, shards_in_memory=2))]
    for expected, got in zip(stream[7:], resumed):
        np.testing.assert_array_equal(got, expected)


def test_unfinished_collection_is_refused(tmp_path):
    write_activations(sparse_tokens(10), tmp_path / "acts", layer=0)
    manifest_path = tmp_path / "acts" / "manifest.json"
    raw = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**raw, "complete": False}))
    with pytest.raises(ActivationStoreError, match="unfinished"):
        ActivationStore(tmp_path / "acts")
    with pytest.raises(ActivationStoreError, match="collect them first"):
        ActivationStore(tmp_path / "nothing")


# -- the trainer ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_relu(synthetic, tmp_path_factory):
    folder, _ = synthetic
    out = tmp_path_factory.mktemp("relu")
    result = train_sae(folder, steps=300, log_every=25, eval_every=100, save_to=out / "sae.safetensors", **RELU)
    return result


def test_relu_training_recovers_the_sparse_structure(trained_relu):
    records = read_metrics_log(trained_relu.metrics_path)
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses) == 12 and losses[-1] < 0.2 * losses[0]
    fves = [r["fve"] for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [100, 200, 300]
    assert fves[-1] > 0.93 and fves[-1] > fves[0]
    assert records[-1]["kind"] == "final" and records[-1]["fve"] == trained_relu.metrics["fve"]
    assert trained_relu.metrics["fve"] > 0.93
    assert trained_relu.metrics["l0"] < 48 / 2


def test_reported_l0_and_fve_match_an_independent_count_on_the_saved_sae(trained_relu, synthetic):
    _, tokens = synthetic
    held_out = tokens[len(tokens) - held_out_tokens(len(tokens), RELU["eval_tokens"]) :]
    assert len(held_out) == 500
    sae = load(trained_relu.sae_path)
    w = {name: getattr(sae, name).detach().double().numpy() for name in ("W_e", "b_e", "b_d", "W_d", "b_h")}
    z = np.maximum((held_out - w["b_d"]) @ w["W_e"].T + w["b_e"], 0.0)
    h_hat = z @ w["W_d"].T + w["b_h"]
    fve = 1 - ((held_out - h_hat) ** 2).sum() / ((held_out - held_out.mean(axis=0)) ** 2).sum()
    stored = sae.extra["training"]
    assert stored["fve"] == pytest.approx(fve, abs=1e-5)
    assert stored["l0"] == pytest.approx((z > 1e-6).sum(axis=1).mean(), abs=0.01)
    assert stored["l0"] == (sae.encode(torch.from_numpy(held_out)) > 0).sum().item() / len(held_out)
    assert stored["dead_latents"] == int(((z > 0).sum(axis=0) == 0).sum())
    assert {"steps": 300, "l1_coefficient": 0.1, "d_sae": 48, "architecture": "relu"}.items() <= stored.items()


def test_trained_sae_records_layer_and_tokens_and_reloads_with_identical_outputs(trained_relu, synthetic):
    _, tokens = synthetic
    loaded = load(trained_relu.sae_path)
    assert isinstance(loaded, ReluSAE)
    assert (loaded.layer, loaded.tokens, loaded.site, loaded.d_in, loaded.d_sae) == (1, "patch", "resid_post", D, 48)
    h = torch.from_numpy(tokens[:50])
    for got, expected in zip(loaded(h), trained_relu.sae(h)):
        assert torch.equal(got, expected)
    torch.testing.assert_close(loaded.W_d.norm(dim=0), torch.ones(48))
    built = PluginHost(strict=True).registry("sae").get("file").build({"path": str(trained_relu.sae_path), "layer": 1})
    assert torch.equal(built.encode(h), loaded.encode(h))


def test_a_checkpoint_whose_header_length_starts_with_byte_0x80_reloads(tmp_path):
    """Its first byte equals a pickle's; trained SAEs carry metrics of any length, so this happens 1 time in 256."""
    sae = ReluSAE.random_init(4, 8, layer=0)
    for pad in range(256):
        path = save(sae, tmp_path / "sae.safetensors", extra={"pad": "x" * pad})
        if path.read_bytes()[:1] == b"\x80":
            break
    assert load(path).extra["pad"] == "x" * pad


def test_topk_training_keeps_k_latents_and_explains_the_data(synthetic):
    folder, _ = synthetic
    result = train_sae(folder, architecture="topk", d_sae=48, k=4, lr=1e-2, steps=300, batch_size=64, eval_tokens=500)
    assert isinstance(result.sae, TopKSAE) and result.sae.k == 4
    assert result.metrics["l0"] <= 4 and result.metrics["fve"] > 0.85
    torch.testing.assert_close(result.sae.W_d.norm(dim=0), torch.ones(48))
    # the decoder finds the directions the data was made of
    atoms = np.random.default_rng(0).standard_normal((ATOMS, D))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    best_cosine = (atoms @ result.sae.W_d.detach().numpy()).max(axis=1)
    assert (best_cosine > 0.9).sum() >= 20


def test_decoder_bias_starts_at_the_geometric_median(synthetic):
    folder, tokens = synthetic
    result = train_sae(folder, steps=1, init_tokens=10_000, **{**RELU, "lr": 1e-12})
    median = geometric_median(torch.from_numpy(tokens[:2500]).double()).float()
    torch.testing.assert_close(result.sae.b_d.detach(), median, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.sae.b_h.detach(), median, atol=1e-5, rtol=0)


def test_l1_warmup_ramps_the_coefficient(synthetic, tmp_path):
    folder, _ = synthetic
    result = train_sae(folder, steps=8, l1_warmup_steps=4, log_every=1, metrics_path=tmp_path / "m.jsonl", **RELU)
    coefficients = [r["l1_coefficient"] for r in read_metrics_log(result.metrics_path) if r["kind"] == "train"]
    assert coefficients == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.1, 0.1])


def test_resuming_from_a_checkpoint_equals_an_uninterrupted_run(synthetic, tmp_path, monkeypatch):
    folder, _ = synthetic
    settings = {**RELU, "steps": 60, "checkpoint_every": 20, "log_every": 10, "eval_every": 30, "l1_warmup_steps": 15}
    whole = train_sae(folder, checkpoint_dir=tmp_path / "a", save_to=tmp_path / "a.safetensors",
                      metrics_path=tmp_path / "a.jsonl", **settings)

    calls = {"n": 0}
    step = torch.optim.Adam.step

    def interrupted_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 50:
            raise KeyboardInterrupt
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        train_sae(folder, checkpoint_dir=tmp_path / "b", metrics_path=tmp_path / "b.jsonl", **settings)
    monkeypatch.setattr(torch.optim.Adam, "step", step)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["checkpoint-000000020.pt", "checkpoint-000000040.pt"]

    resumed = train_sae(folder, checkpoint_dir=tmp_path / "b", save_to=tmp_path / "b.safetensors",
                        metrics_path=tmp_path / "b.jsonl", **settings)
    assert resumed.resumed_from == 40 and whole.resumed_from is None
    for name, param in whole.sae.named_parameters():
        assert torch.equal(param, getattr(resumed.sae, name)), name
    assert resumed.metrics == whole.metrics

    def without_time(path):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in read_metrics_log(path)]

    assert without_time(tmp_path / "b.jsonl") == without_time(tmp_path / "a.jsonl")
    again = train_sae(folder, checkpoint_dir=tmp_path / "b", **settings)  # finished: nothing left to do
    assert again.resumed_from == 60 and torch.equal(again.sae.W_e, whole.sae.W_e)


def test_training_further_continues_from_the_last_checkpoint(synthetic, tmp_path):
    folder, _ = synthetic
    settings = {**RELU, "checkpoint_every": 20}
    whole = train_sae(folder, steps=50, checkpoint_dir=tmp_path / "a", **settings)
    train_sae(folder, steps=30, checkpoint_dir=tmp_path / "b", **settings)
    longer = train_sae(folder, steps=50, checkpoint_dir=tmp_path / "b", **settings)
    assert longer.resumed_from == 30
    assert all(torch.equal(p, getattr(longer.sae, n)) for n, p in whole.sae.named_parameters())


def test_checkpoints_of_other_settings_are_refused(synthetic, tmp_path):
    folder, _ = synthetic
    train_sae(folder, steps=5, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=5, **RELU)
    with pytest.raises(TrainingError, match=r"other settings \(lr differ\)"):
        train_sae(folder, steps=5, checkpoint_dir=tmp_path / "ckpt", **{**RELU, "lr": 1e-3})


def test_bad_arguments_are_reported_together(synthetic):
    folder, _ = synthetic
    with pytest.raises(TrainingError) as info:
        train_sae(folder, architecture="topk", d_sae=8, expansion=2.0, l1_coefficient=0.1, batch_size=0)
    message = str(info.value)
    for part in ("exactly one of d_sae", "topk SAE needs k", "l1_coefficient applies", "steps and epochs",
                 "batch_size must be >= 1"):
        assert part in message


# -- activation collection on a timm ViT --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vit_assets(tmp_path_factory):
    """A tiny timm ViT checkpoint (depth 2, width 32, 4x4 patches of 8 pixels, a class token) and 5 PNGs."""
    timm = pytest.importorskip("timm")
    pytest.importorskip("cafe_timm")
    pytest.importorskip("cafe_datasets")
    from PIL import Image
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, **VIT_KWARGS)
    save_file(model.state_dict(), str(root / "vit.safetensors"))
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(images / f"img{i}.png")
    return root


VIT_KWARGS = {"patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}


def _vit(root):
    from cafe_timm.vit import TimmViT

    return TimmViT("vit_tiny_patch16_224", checkpoint=root / "vit.safetensors", img_size=32, model_kwargs=VIT_KWARGS)


def _folder(root):
    from cafe_datasets.folder import ImageFolder

    return ImageFolder(root / "images")


def _direct_tokens(backbone, dataset, layer, positions, batch_size):
    """forward_to on the same batches, written out without the collection code."""
    out = []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            images = [dataset[i].image for i in range(start, min(start + batch_size, len(dataset)))]
            tokens = backbone.forward_to(backbone.preprocess(images), layer)
            out.append(tokens[:, positions].reshape(-1, backbone.width))
    return torch.cat(out).numpy()


@pytest.mark.parametrize(
    "token_set, positions, per_image", [("patch", slice(1, 17), 16), ("cls", [0], 1), ("all", slice(0, 17), 17)]
)
def test_collection_stores_exactly_the_tokens_of_forward_to(vit_assets, tmp_path, token_set, positions, per_image):
    backbone, dataset = _vit(vit_assets), _folder(vit_assets)
    manifest = collect_activations(backbone, dataset, 1, token_set, tmp_path / "acts", batch_size=2, shard_tokens=7)
    assert (manifest.d_in, manifest.layer, manifest.token_set, manifest.tokens_per_image) == (32, 1, token_set,
                                                                                              per_image)
    assert manifest.complete and manifest.num_tokens == 5 * per_image and manifest.images_done == 5
    sizes = [s.tokens for s in manifest.shards]
    assert all(size == 7 for size in sizes[:-1]) and 1 <= sizes[-1] <= 7
    stored = ActivationStore(tmp_path / "acts").read(0, manifest.num_tokens)
    np.testing.assert_array_equal(stored, _direct_tokens(backbone, dataset, 1, positions, 2))
    on_disk = json.loads((tmp_path / "acts" / "manifest.json").read_text())
    assert on_disk["tokens"] == 5 * per_image and on_disk["source"]["backbone"]["width"] == 32


class _FailingAfter:
    """A dataset that raises once ``budget`` items have been read, as if the process were killed."""

    def __init__(self, dataset, budget):
        self.dataset, self.budget = dataset, budget

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        self.budget -= 1
        if self.budget < 0:
            raise KeyboardInterrupt
        return self.dataset[index]


def test_collection_resumes_after_an_interruption_without_duplicating_tokens(vit_assets, tmp_path):
    backbone, dataset = _vit(vit_assets), _folder(vit_assets)
    whole = collect_activations(backbone, dataset, 0, "patch", tmp_path / "whole", batch_size=2, shard_tokens=12)
    with pytest.raises(KeyboardInterrupt):
        collect_activations(backbone, _FailingAfter(dataset, 3), 0, "patch", tmp_path / "cut", batch_size=2,
                            shard_tokens=12)
    partial = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    assert not partial["complete"] and partial["tokens"] == 24  # images 0 and 1 made two full shards
    resumed = collect_activations(backbone, dataset, 0, "patch", tmp_path / "cut", batch_size=2, shard_tokens=12)
    assert resumed.num_tokens == whole.num_tokens == 80 and resumed.complete
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == sorted(
        ["manifest.json"] + [s.file for s in resumed.shards]
    )
    for a, b in zip(whole.shards, resumed.shards):
        assert a.tokens == b.tokens
        np.testing.assert_array_equal(np.load(tmp_path / "whole" / a.file), np.load(tmp_path / "cut" / b.file))
    again = collect_activations(backbone, dataset, 0, "patch", tmp_path / "cut", batch_size=2, shard_tokens=12)
    assert again.shards == resumed.shards


def test_collection_problems_are_reported(vit_assets, tmp_path):
    backbone, dataset = _vit(vit_assets), _folder(vit_assets)
    with pytest.raises(ActivationStoreError, match="layer 2 is past the backbone's 2 blocks"):
        collect_activations(backbone, dataset, 2, "patch", tmp_path / "a")
    backbone.prefix_tokens = ()  # as for a model without a class token
    with pytest.raises(ActivationStoreError, match="tokens 'cls' needs a class token"):
        collect_activations(backbone, dataset, 0, "cls", tmp_path / "a")
    backbone = _vit(vit_assets)
    collect_activations(backbone, dataset, 0, "cls", tmp_path / "b", limit=2)
    with pytest.raises(ActivationStoreError, match=r"other settings \(layer differ\)"):
        collect_activations(backbone, dataset, 1, "cls", tmp_path / "b", limit=2)


# -- the training spec and `cafe train-sae` -----------------------------------------------------------------------


SPEC = """
[backbone]
name = "timm"
model = "vit_tiny_patch16_224"
checkpoint = "vit.safetensors"
img_size = 32
model_kwargs = {{ patch_size = 8, depth = 2, embed_dim = 32, num_heads = 2 }}

[dataset]
name = "folder"
path = "images"

[sae]
layer = {layer}
tokens = "patch"
architecture = "relu"
expansion = 2
l1_coefficient = 0.001

[training]
steps = {steps}
batch_size = 16
lr = 0.003
shard_tokens = 20
image_batch_size = 2
checkpoint_every = 10
eval_tokens = 16
device = "cpu"
"""


def test_train_sae_command_end_to_end(vit_assets, tmp_path, capsys):
    spec = vit_assets / "train.toml"  # relative paths in the spec start at its folder
    spec.write_text(SPEC.format(layer=1, steps=30))
    out = tmp_path / "out"
    assert main(["train-sae", str(spec), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "variance explained" in printed and "mean L0" in printed and "dead latents" in printed
    assert {p.name for p in out.iterdir()} >= {"activations", "checkpoints", "sae.safetensors", "metrics.jsonl"}
    sae = load(out / "sae.safetensors")
    assert (sae.layer, sae.tokens, sae.d_in, sae.d_sae) == (1, "patch", 32, 64)
    assert sae.extra["training"]["steps"] == 30 and sae.extra["backbone"]["name"] == "timm"
    manifest = json.loads((out / "activations" / "manifest.json").read_text())
    assert (manifest["tokens"], manifest["layer"], manifest["token_set"]) == (80, 1, "patch")
    assert max(s["tokens"] for s in manifest["shards"]) <= 20
    first = sae.W_e.detach().clone()

    spec.write_text(SPEC.format(layer=1, steps=40))  # rerunning resumes, here to train 10 steps further
    assert main(["train-sae", str(spec), "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    longer = load(out / "sae.safetensors")
    assert longer.extra["training"]["steps"] == 40 and not torch.equal(longer.W_e, first)


def test_train_from_spec_returns_the_paths_and_metrics(vit_assets, tmp_path):
    spec = SPEC.format(layer=0, steps=5).replace('"vit.safetensors"', json.dumps(str(vit_assets / "vit.safetensors")))
    raw = tomllib.loads(spec.replace('"images"', json.dumps(str(vit_assets / "images"))))
    result = train_from_spec(raw, tmp_path / "out", progress=False)
    assert result.sae_path == tmp_path / "out" / "sae.safetensors" and result.sae_path.is_file()
    assert result.metrics["steps"] == 5 and 0 <= result.metrics["dead_fraction"] <= 1
    assert result.metrics["tokens"] == 16
    assert load(result.sae_path).layer == 0
    assert read_metrics_log(result.metrics_path)[-1]["kind"] == "final"


def test_spec_errors_are_reported_together_with_a_non_zero_exit(vit_assets, tmp_path, capsys):
    spec = vit_assets / "bad.toml"
    text = SPEC.format(layer=-1, steps='"many"').replace('name = "timm"', 'name = "vit_unknown"')
    spec.write_text(text)
    assert main(["train-sae", str(spec), "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "3 problem(s)" in err
    assert "backbone.name:" in err and "vit_unknown" in err
    assert "sae.layer: Input should be greater than or equal to 0" in err
    assert "training.steps: Input should be a valid integer" in err
    assert not (tmp_path / "out").exists()


def test_problems_found_by_building_the_backbone_are_reported_with_the_rest(vit_assets):
    raw = {
        "backbone": {"name": "timm", "model": "vit_tiny_patch16_224", "checkpoint": str(vit_assets / "vit.safetensors"),
                     "img_size": 32, "model_kwargs": VIT_KWARGS},
        "dataset": {"name": "folder", "path": str(vit_assets / "missing")},
        "sae": {"layer": 5, "tokens": "patch", "architecture": "topk", "d_sae": 64, "k": 8},
        "training": {"steps": 10, "lr": 0, "device": "gpu"},
        "run": {},
    }
    with pytest.raises(SpecError) as info:
        prepare_training(raw)
    paths = [path for path, _ in info.value.problems]
    assert sorted(paths) == ["dataset.path", "run", "sae.layer", "training.device", "training.lr"]
    assert "layer 5 is past the backbone's 2 blocks" in dict(info.value.problems)["sae.layer"]


def test_sae_section_rules():
    base = {"backbone": {"name": "timm"}, "dataset": {"name": "folder"}, "training": {"epochs": 1}}
    cases = {
        "give exactly one of `d_sae`": {"layer": 0, "l1_coefficient": 0.1},
        "a relu SAE needs `l1_coefficient`": {"layer": 0, "d_sae": 8},
        "a topk SAE needs `k`": {"layer": 0, "d_sae": 8, "architecture": "topk"},
        "k = 9 is more than d_sae = 8": {"layer": 0, "d_sae": 8, "architecture": "topk", "k": 9},
        "`k` applies to architecture = 'topk' only": {"layer": 0, "d_sae": 8, "l1_coefficient": 0.1, "k": 2},
    }
    for message, sae in cases.items():
        with pytest.raises(SpecError, match=message):
            load_training_spec({**base, "sae": sae})
    spec, _ = load_training_spec({**base, "sae": {"layer": 3, "expansion": 4, "architecture": "topk", "k": 8}})
    assert spec.training.batch_size == 4096 and spec.training.device == "auto" and spec.sae.tokens == "patch"


def test_old_site_key_of_the_sae_section_still_works_with_a_warning():
    base = {"backbone": {"name": "timm"}, "dataset": {"name": "folder"}, "training": {"epochs": 1}}
    sae = {"layer": 0, "d_sae": 8, "l1_coefficient": 0.1, "site": "cls"}
    with pytest.warns(DeprecationWarning, match="write `tokens = \"cls\"`"):
        spec, _ = load_training_spec({**base, "sae": sae})
    assert spec.sae.tokens == "cls"
    with pytest.raises(SpecError, match="contradicts tokens = 'all'"), pytest.warns(DeprecationWarning):
        load_training_spec({**base, "sae": {**sae, "tokens": "all"}})


def test_old_data_section_of_a_training_spec_is_read_as_dataset_with_a_warning():
    base = {"backbone": {"name": "timm"}, "data": {"name": "folder"}, "training": {"epochs": 1},
            "sae": {"layer": 0, "d_sae": 8, "l1_coefficient": 0.1}}
    with pytest.warns(DeprecationWarning, match="`data` is deprecated, write `dataset` instead"):
        spec, _ = load_training_spec(base)
    assert spec.dataset.name == "folder"
    with pytest.raises(SpecError, match="give only `dataset`"):
        load_training_spec({**base, "dataset": {"name": "folder"}})


def test_version1_manifest_and_checkpoint_settings_are_still_read(tmp_path):
    from cafe_sae.training.trainer import _upgraded_settings

    manifest = write_activations(sparse_tokens(20), tmp_path / "acts", layer=0, tokens="cls")
    path = tmp_path / "acts" / "manifest.json"
    raw = json.loads(path.read_text())
    raw["site"] = raw.pop("token_set")
    raw["format_version"] = 1
    path.write_text(json.dumps(raw))
    old = ActivationManifest.read(tmp_path / "acts")
    assert old.token_set == "cls" and old.identity() == manifest.identity()
    raw["source"] = {"data": {"name": "folder"}, "limit": None}  # version 1 also called the dataset "data"
    path.write_text(json.dumps(raw))
    assert ActivationManifest.read(tmp_path / "acts").source == {"dataset": {"name": "folder"}, "limit": None}
    settings = {"lr": 0.1, "activations": {"layer": 0, "site": "cls"}}
    assert _upgraded_settings(settings) == {"lr": 0.1, "activations": {"layer": 0, "token_set": "cls"}}


def test_the_command_is_registered_by_the_sae_plugin():
    registration = PluginHost(strict=True).registry("command").get("train-sae")
    assert registration.plugin == "sae"
    assert registration.factory == "cafe_sae.training.command:TrainSAECommand"
