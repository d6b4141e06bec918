"""Training of the default ViT: a per-token head on the shapes dataset, reproducible from a seed.

Every token (the class token and each patch token) is classified by the model's head after the final norm;
the loss is the cross-entropy averaged over all tokens and the image prediction is the mean of the token
logits. Asking every patch token to predict a label that depends on objects elsewhere in the image is what
makes the late blocks carry non-local features.
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

__all__ = ["ViTTrainingConfig", "evaluate", "save_vit", "token_logits", "train_vit"]


@dataclass
class ViTTrainingConfig:
    """Everything that determines the trained weights."""

    model: str
    model_kwargs: dict[str, Any]
    image_size: int = 32
    seed: int = 0
    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    train_images: int = 40_000
    validation_images: int = 2_000
    train_seed: int = 1
    validation_seed: int = 2
    evaluate_every: int = 500
    log_every: int = 50


@dataclass
class ViTTrainingResult:
    """The trained backbone and the training log."""

    backbone: Any
    log: dict[str, Any] = field(default_factory=dict)


def token_logits(backbone: Any, x: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, T, C]`` of every token: the head applied after the final norm."""
    return backbone.model.head(backbone.model.forward_features(x))


def evaluate(backbone: Any, images: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> dict[str, float]:
    """Accuracy of the image prediction (mean of token logits), of the class token, and of patch tokens alone."""
    was_training = backbone.model.training
    backbone.model.eval()
    correct = {"image": 0.0, "cls_token": 0.0, "patch_tokens": 0.0}
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = backbone.preprocess(list(images[start : start + batch]))
            y = labels[start : start + batch]
            logits = token_logits(backbone, x)
            correct["image"] += int((logits.mean(1).argmax(-1) == y).sum())
            if backbone.prefix_tokens[:1] == ("cls",):
                correct["cls_token"] += int((logits[:, 0].argmax(-1) == y).sum())
            patches = logits[:, len(backbone.prefix_tokens) :]
            correct["patch_tokens"] += float((patches.argmax(-1) == y[:, None]).float().mean(1).sum())
    backbone.model.train(was_training)
    return {k: v / len(images) for k, v in correct.items()}


def train_vit(config: ViTTrainingConfig, report: Callable[[dict], None] = lambda record: None) -> ViTTrainingResult:
    """Train a timm ViT on the shapes dataset as :mod:`cafe_toy.vit_training` describes.

    Parameters
    ----------
    config : ViTTrainingConfig
        Architecture, data and optimisation settings; the result depends on nothing else (on one device).
    report : callable
        Receives each log record as it is made.

    Returns
    -------
    ViTTrainingResult
        The backbone (in eval mode) and the log: config, per-step loss, validation accuracies.
    """
    from cafe_shapes.dataset import ShapesDataset
    from cafe_timm.vit import TimmViT

    torch.manual_seed(config.seed)
    backbone = TimmViT(config.model, img_size=config.image_size, model_kwargs=config.model_kwargs)
    model = backbone.model.train()

    started = time.time()
    train_images, train_labels, _ = ShapesDataset(config.train_images, seed=config.train_seed).tensors()
    val_images, val_labels, _ = ShapesDataset(config.validation_images, seed=config.validation_seed).tensors()
    generation_seconds = time.time() - started

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, config.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / config.steps))),
    )
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(train_images), generator=generator)
    position, history = 0, []
    started = time.time()
    for step in range(config.steps):
        if position + config.batch_size > len(order):
            order, position = torch.randperm(len(train_images), generator=generator), 0
        index = order[position : position + config.batch_size]
        position += config.batch_size
        x = backbone.preprocess(list(train_images[index]))
        logits = token_logits(backbone, x)
        y = train_labels[index][:, None].expand(-1, logits.shape[1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % config.log_every == 0 or step == config.steps - 1:
            record = {"step": step, "loss": round(loss.item(), 4), "seconds": round(time.time() - started, 1)}
            if step % config.evaluate_every == 0 or step == config.steps - 1:
                record["validation"] = evaluate(backbone, val_images, val_labels)
            history.append(record)
            report(record)
    model.eval()
    log = {
        "config": {k: v for k, v in vars(config).items()},
        "head": "per-token: cross-entropy averaged over every token; image prediction = mean of token logits",
        "generation_seconds": round(generation_seconds, 1),
        "training_seconds": round(time.time() - started, 1),
        "final_validation": evaluate(backbone, val_images, val_labels),
        "history": history,
    }
    return ViTTrainingResult(backbone, log)


def save_vit(result: ViTTrainingResult, directory: pathlib.Path) -> pathlib.Path:
    """Write ``vit.safetensors`` (float16) and ``vit_log.json`` into ``directory``; returns the weights' path."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "vit.safetensors"
    state = result.backbone.model.state_dict()
    save_file({k: v.detach().half().contiguous() for k, v in state.items()}, str(path))
    (directory / "vit_log.json").write_text(json.dumps(result.log, indent=1) + "\n")
    return path
