"""Train a ReLU or TopK SAE on collected activations, with held-out evaluation and exact resumption."""

from __future__ import annotations

import math
import pathlib
import time
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from tqdm.auto import tqdm

from ..base import BaseSAE
from .checkpoints import latest_checkpoint, restore_rng, rng_state, save_checkpoint
from .errors import TrainingError
from .initialisation import BIAS_INITS, initial_sae
from .log import MetricsLog
from .metrics import EvalMetrics, evaluate_sae
from .store import ActivationStore

__all__ = ["TrainResult", "held_out_tokens", "train_sae"]

ARCHITECTURES = ("relu", "topk")


@dataclass
class TrainResult:
    """What :func:`train_sae` returns.

    Attributes
    ----------
    sae : BaseSAE
        The trained SAE, on the CPU, trainable (``requires_grad`` on).
    metrics : dict
        Final held-out metrics (``fve``, ``l0``, ``mse``, ``dead_latents``, ``dead_fraction``, ``tokens``) and
        the training settings (``steps``, ``tokens_seen``, ``l1_coefficient``, ``k``, ``lr``...), as stored in
        the checkpoint's ``extra["training"]``.
    steps : int
        Optimiser steps taken in all (across resumptions).
    resumed_from : int or None
        The step of the checkpoint this call continued from, if any.
    sae_path, metrics_path : pathlib.Path or None
        Where the SAE and the metrics log were written.
    """

    sae: BaseSAE
    metrics: dict[str, Any]
    steps: int
    resumed_from: int | None = None
    sae_path: pathlib.Path | None = None
    metrics_path: pathlib.Path | None = None


def held_out_tokens(num_tokens: int, eval_tokens: int) -> int:
    """How many of the last tokens are held out for evaluation: ``eval_tokens``, at most a fifth of them all."""
    return min(int(eval_tokens), int(num_tokens) // 5)


def train_sae(
    activations_dir: str | pathlib.Path,
    *,
    architecture: str = "relu",
    d_sae: int | None = None,
    expansion: float | None = None,
    l1_coefficient: float | None = None,
    k: int | None = None,
    lr: float = 4e-4,
    steps: int | None = None,
    epochs: float | None = None,
    batch_size: int = 4096,
    seed: int = 0,
    l1_warmup_steps: int = 0,
    bias_init: str = "median",
    init_tokens: int = 16384,
    eval_tokens: int = 4096,
    eval_every: int | None = None,
    log_every: int = 100,
    shards_in_memory: int = 4,
    checkpoint_dir: str | pathlib.Path | None = None,
    checkpoint_every: int = 1000,
    keep_checkpoints: int = 2,
    save_to: str | pathlib.Path | None = None,
    metrics_path: str | pathlib.Path | None = None,
    extra: Mapping[str, Any] | None = None,
    progress: bool = False,
    device: torch.device | str = "cpu",
) -> TrainResult:
    """Train an SAE on the activations of a folder written by
    :func:`~cafe_sae.training.activations.collect_activations`.

    The last tokens of the folder (``eval_tokens``, at most a fifth) are held out; the rest is streamed in
    shuffled minibatches (:meth:`~cafe_sae.training.store.ActivationStore.batches`). Each step minimises
    :meth:`~cafe_sae.base.BaseSAE.loss` with Adam: ``||h - h_hat||^2 + lambda * ||z||_1`` for ReLU, the
    squared error alone for TopK. After each step the decoder columns get unit norm: for ReLU through
    :meth:`~cafe_sae.base.BaseSAE.normalize_decoder_` (which rescales the encoder, keeping the function), for
    TopK by dividing the columns by their norms. Both decoder biases start at the geometric median (or mean)
    of a sample of training tokens.

    With ``checkpoint_dir``, the model, optimiser, step and RNG state are saved every ``checkpoint_every``
    steps and at the end; calling again with the same arguments resumes from the newest checkpoint and ends
    with the same weights as an uninterrupted run (bit for bit on the same device). ``steps`` may grow
    between calls to train further.

    Parameters
    ----------
    activations_dir : path
        A finished collection of activations.
    architecture : {"relu", "topk"}
        The SAE to train.
    d_sae, expansion : optional
        Number of latents, or its ratio to ``d_in``; give exactly one.
    l1_coefficient : float
        ``lambda`` of the ReLU loss (required for ReLU, not allowed for TopK).
    k : int
        Latents kept per token (required for TopK, not allowed for ReLU).
    lr : float
        Adam learning rate.
    steps, epochs : optional
        Length of training, in steps or in passes over the training tokens; give exactly one.
    batch_size : int
        Tokens per step.
    seed : int
        Seed of the initial weights and of the shuffling (``>= 0``).
    l1_warmup_steps : int
        Ramp ``lambda`` linearly from ``lambda / l1_warmup_steps`` to ``lambda`` over these first steps.
    bias_init : {"median", "mean", "zero"}
        Where ``b_d`` and ``b_h`` start: the geometric median or mean of ``init_tokens`` training tokens, or 0.
    init_tokens : int
        Size of that sample.
    eval_tokens : int
        Tokens held out for evaluation (at most a fifth of the folder).
    eval_every : int, optional
        Evaluate every this many steps (default ``checkpoint_every``), and always at the end.
    log_every : int
        Write the mean training loss of the last ``log_every`` steps to the metrics log.
    shards_in_memory : int
        Shards shuffled together (bounds memory).
    checkpoint_dir : path, optional
        Where checkpoints go; without it, nothing is saved during training and nothing resumes.
    checkpoint_every : int
        Steps between checkpoints.
    keep_checkpoints : int
        Newest checkpoints kept.
    save_to : path, optional
        Write the final SAE there with :func:`cafe_sae.io.save`.
    metrics_path : path, optional
        The JSON-lines metrics log; default ``metrics.jsonl`` beside ``save_to``.
    extra : mapping, optional
        Further JSON-serialisable information stored in the SAE's ``extra``.
    progress : bool
        Show a progress bar.
    device : torch.device or str
        Where to train.

    Returns
    -------
    TrainResult

    Raises
    ------
    TrainingError
        Listing every bad argument; or if ``checkpoint_dir`` holds checkpoints of other settings.
    ActivationStoreError
        If the activations cannot be read.
    """
    store = ActivationStore(activations_dir)
    manifest = store.manifest
    d_sae = _check_arguments(
        store.d_in, architecture, d_sae, expansion, l1_coefficient, k, lr, steps, epochs, batch_size, seed,
        l1_warmup_steps, bias_init, eval_every, log_every, checkpoint_every,
    )
    n_eval = held_out_tokens(store.num_tokens, eval_tokens)
    n_train = store.num_tokens - n_eval
    if n_eval < 2 or n_train < 1:
        raise TrainingError(
            f"{store.directory} holds {store.num_tokens} tokens, too few to hold some out for evaluation and train "
            "on the rest; collect more images"
        )
    total_steps = int(steps) if steps is not None else max(1, math.ceil(float(epochs) * n_train / batch_size))
    eval_every = int(eval_every or checkpoint_every)
    coefficient = float(l1_coefficient) if architecture == "relu" else 0.0
    settings = {
        "architecture": architecture,
        "d_in": store.d_in,
        "d_sae": d_sae,
        "l1_coefficient": l1_coefficient,
        "l1_warmup_steps": int(l1_warmup_steps),
        "k": k,
        "lr": float(lr),
        "batch_size": int(batch_size),
        "seed": int(seed),
        "bias_init": bias_init,
        "init_tokens": int(init_tokens),
        "eval_tokens": n_eval,
        "shards_in_memory": int(shards_in_memory),
        "activations": {**manifest.identity(), "tokens": store.num_tokens},
    }
    device = torch.device(device)

    found = latest_checkpoint(checkpoint_dir)
    sample = None
    if found is None:
        sample = torch.from_numpy(store.sample(init_tokens, seed=seed, stop=n_train))
    sae = initial_sae(
        architecture, store.d_in, d_sae, k=k, seed=seed, layer=manifest.layer, tokens=manifest.token_set, sample=sample,
        bias_init=bias_init,
    ).to(device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=float(lr))
    start = 0
    if found is not None:
        start = _restore(found, settings, sae, optimizer)
    resumed_from = start if found is not None else None

    if save_to is not None and metrics_path is None:
        metrics_path = pathlib.Path(save_to).parent / "metrics.jsonl"
    log = MetricsLog(metrics_path, resume_step=resumed_from)
    held_out = torch.from_numpy(store.read(n_train, store.num_tokens)).to(device)
    stream = store.batches(
        batch_size, seed=seed, start=start * batch_size, stop=n_train, shards_in_memory=shards_in_memory
    )

    began = time.perf_counter()
    evaluation: EvalMetrics | None = None
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    since_log = 0
    with tqdm(total=max(total_steps, start), initial=start, desc="train sae", unit="step", disable=not progress) as bar:
        for step in range(start, total_steps):
            h = next(stream).to(device)
            current = coefficient * min(1.0, (step + 1) / l1_warmup_steps) if l1_warmup_steps else coefficient
            loss = sae.loss(h, l1_coefficient=current)
            optimizer.zero_grad(set_to_none=True)
            loss.total.backward()
            optimizer.step()
            _unit_decoder_(sae)
            done = step + 1
            sums += torch.stack([loss.total.detach(), loss.mse.detach(), loss.l1.detach()]).double()
            since_log += 1
            if done % log_every == 0 or done == total_steps:
                mean = (sums / since_log).tolist()
                log.write({"kind": "train", "step": done, "loss": mean[0], "mse": mean[1], "l1": mean[2],
                           "l1_coefficient": current})
                bar.set_postfix(loss=f"{mean[0]:.4g}", refresh=False)
                sums.zero_()
                since_log = 0
            if done % eval_every == 0 or done == total_steps:
                evaluation = evaluate_sae(sae, held_out, batch_size=batch_size)
                log.write({"kind": "eval", "step": done, **evaluation.to_dict()})
                bar.set_postfix(fve=f"{evaluation.fve:.3f}", l0=f"{evaluation.l0:.1f}", refresh=False)
            if checkpoint_dir is not None and (done % checkpoint_every == 0 or done == total_steps):
                _checkpoint(checkpoint_dir, done, settings, sae, optimizer, keep_checkpoints)
            bar.update(1)

    steps_done = max(total_steps, start)
    if evaluation is None:
        evaluation = evaluate_sae(sae, held_out, batch_size=batch_size)
    metrics = {
        **evaluation.to_dict(),
        "steps": steps_done,
        "tokens_seen": steps_done * int(batch_size),
        "train_tokens": n_train,
        **{key: settings[key] for key in ("architecture", "d_sae", "l1_coefficient", "l1_warmup_steps", "k", "lr",
                                          "batch_size", "seed", "bias_init")},
    }
    log.write({"kind": "final", "step": steps_done, **metrics, "seconds": time.perf_counter() - began})
    sae = sae.to("cpu")
    sae.extra = {**sae.extra, **dict(extra or {}), "training": metrics}
    if save_to is not None:
        from ..io import save

        save(sae, save_to)
    return TrainResult(
        sae=sae,
        metrics=metrics,
        steps=steps_done,
        resumed_from=resumed_from,
        sae_path=None if save_to is None else pathlib.Path(save_to),
        metrics_path=None if metrics_path is None else pathlib.Path(metrics_path),
    )


@torch.no_grad()
def _unit_decoder_(sae: BaseSAE) -> None:
    if sae.architecture == "relu":
        sae.normalize_decoder_()
    else:
        # Rescaling the encoder as normalize_decoder_ does could change which k latents win; a plain
        # projection of the decoder keeps the selection and is the usual constraint for TopK.
        sae.W_d.div_(sae.W_d.norm(dim=0).clamp_min(torch.finfo(sae.W_d.dtype).tiny))


def _checkpoint(directory, step, settings, sae, optimizer, keep) -> None:
    state = {
        "step": step,
        "settings": settings,
        "model": sae.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
    }
    save_checkpoint(pathlib.Path(directory), state, keep=keep)


def _restore(found, settings, sae, optimizer) -> int:
    path, state = found
    old = _upgraded_settings(state.get("settings") or {})
    if old != settings:
        differ = sorted(key for key in set(old) | set(settings) if old.get(key) != settings.get(key))
        raise TrainingError(
            f"{path} was written by a training run with other settings ({', '.join(differ)} differ); use another "
            "checkpoint folder, or delete it to train from the start"
        )
    sae.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    restore_rng(state["rng"])
    return int(state["step"])


def _upgraded_settings(settings: dict) -> dict:
    """Settings recorded before the activations' token set was renamed from ``site`` to ``token_set``."""
    activations = settings.get("activations")
    if isinstance(activations, dict) and "site" in activations:
        activations = {("token_set" if key == "site" else key): value for key, value in activations.items()}
        return {**settings, "activations": activations}
    return settings


def _check_arguments(
    d_in, architecture, d_sae, expansion, l1_coefficient, k, lr, steps, epochs, batch_size, seed, l1_warmup_steps,
    bias_init, eval_every, log_every, checkpoint_every,
) -> int:
    """Every problem with the arguments at once; returns ``d_sae``."""
    problems = []
    if architecture not in ARCHITECTURES:
        problems.append(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    if (d_sae is None) == (expansion is None):
        problems.append("give exactly one of d_sae (number of latents) and expansion (d_sae / d_in)")
    elif d_sae is None and expansion is not None:
        d_sae = int(round(float(expansion) * d_in))
    if d_sae is not None and int(d_sae) < 1:
        problems.append(f"d_sae must be >= 1, got {d_sae}")
    if architecture == "relu":
        if l1_coefficient is None or float(l1_coefficient) < 0:
            problems.append(f"a relu SAE needs l1_coefficient >= 0, got {l1_coefficient!r}")
        if k is not None:
            problems.append("k applies to architecture 'topk' only")
    if architecture == "topk":
        if k is None or int(k) < 1 or (d_sae is not None and int(k) > int(d_sae)):
            problems.append(f"a topk SAE needs k in [1, d_sae={d_sae}], got {k!r}")
        if l1_coefficient is not None:
            problems.append("l1_coefficient applies to architecture 'relu' only (TopK's sparsity is k)")
    if (steps is None) == (epochs is None):
        problems.append("give exactly one of steps and epochs")
    elif (steps is not None and int(steps) < 1) or (epochs is not None and float(epochs) <= 0):
        problems.append(f"steps must be >= 1 and epochs > 0, got steps={steps!r}, epochs={epochs!r}")
    if not float(lr) > 0:
        problems.append(f"lr must be > 0, got {lr!r}")
    for name, value in (("batch_size", batch_size), ("log_every", log_every), ("checkpoint_every", checkpoint_every)):
        if int(value) < 1:
            problems.append(f"{name} must be >= 1, got {value!r}")
    if eval_every is not None and int(eval_every) < 1:
        problems.append(f"eval_every must be >= 1, got {eval_every!r}")
    if int(seed) < 0 or int(l1_warmup_steps) < 0:
        problems.append(f"seed and l1_warmup_steps must be >= 0, got {seed!r} and {l1_warmup_steps!r}")
    if bias_init not in BIAS_INITS:
        problems.append(f"bias_init must be one of {BIAS_INITS}, got {bias_init!r}")
    if problems:
        raise TrainingError("cannot train: " + "; ".join(problems))
    return int(d_sae)
