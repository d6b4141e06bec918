"""Train the default ViT of cafe-plugin-toy on the shapes dataset, reproducibly from a seed.

The model is a 4-block timm ViT (width 128, 4 heads, 4-pixel patches on 32x32 images, a class token) with a
*per-token head*: the classifier is applied to every token, the loss is the cross-entropy averaged over all
tokens, and the image prediction is the mean of the token logits. Asking every patch token to predict a label
that depends on objects elsewhere in the image is what makes the late blocks carry non-local features.

Usage (from the repository root, after the README's setup)::

    .venv/bin/python plugins/cafe-plugin-toy/training/train_vit.py --out plugins/cafe-plugin-toy/cafe_toy/weights

writes ``vit.safetensors`` (float16) and ``vit_log.json`` (config, per-step loss, validation accuracy).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from cafe_shapes.dataset import ShapesDataset
from cafe_timm.vit import TimmViT
from cafe_toy.assets import IMAGE_SIZE, MODEL, MODEL_KWARGS

TRAIN_SEED, VALIDATION_SEED = 1, 2


def token_logits(backbone: TimmViT, x: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, T, C]`` of every token: the head applied after the final norm."""
    return backbone.model.head(backbone.model.forward_features(x))


def evaluate(backbone: TimmViT, images: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> dict[str, float]:
    """Image accuracy (mean of token logits) and the accuracy of the class token and of patch tokens alone."""
    backbone.model.eval()
    correct = {"image": 0, "cls_token": 0, "patch_tokens": 0}
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = backbone.preprocess(list(images[start : start + batch]))
            y = labels[start : start + batch]
            logits = token_logits(backbone, x)
            correct["image"] += int((logits.mean(1).argmax(-1) == y).sum())
            correct["cls_token"] += int((logits[:, 0].argmax(-1) == y).sum())
            correct["patch_tokens"] += int((logits[:, 1:].argmax(-1) == y[:, None]).float().mean(1).sum())
    backbone.model.train()
    return {k: v / len(images) for k, v in correct.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-images", type=int, default=40_000)
    parser.add_argument("--validation-images", type=int, default=2_000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    backbone = TimmViT(MODEL, img_size=IMAGE_SIZE, model_kwargs=MODEL_KWARGS)
    model = backbone.model.train()

    started = time.time()
    train_images, train_labels, _ = ShapesDataset(args.train_images, seed=TRAIN_SEED).tensors()
    val_images, val_labels, _ = ShapesDataset(args.validation_images, seed=VALIDATION_SEED).tensors()
    generation_seconds = time.time() - started

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))),
    )
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(train_images), generator=generator)
    position, history = 0, []
    started = time.time()
    for step in range(args.steps):
        if position + args.batch_size > len(order):
            order, position = torch.randperm(len(train_images), generator=generator), 0
        index = order[position : position + args.batch_size]
        position += args.batch_size
        x = backbone.preprocess(list(train_images[index]))
        logits = token_logits(backbone, x)
        y = train_labels[index][:, None].expand(-1, logits.shape[1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == args.steps - 1:
            record = {"step": step, "loss": round(loss.item(), 4), "seconds": round(time.time() - started, 1)}
            if step % 500 == 0 or step == args.steps - 1:
                record["validation"] = evaluate(backbone, val_images, val_labels)
            history.append(record)
            print(json.dumps(record), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    model.eval()
    save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()}, str(args.out / "vit.safetensors"))
    final = evaluate(backbone, val_images, val_labels)
    log = {
        "model": MODEL,
        "model_kwargs": MODEL_KWARGS,
        "image_size": IMAGE_SIZE,
        "head": "per-token: cross-entropy averaged over every token; image prediction = mean of token logits",
        "args": {k: str(v) if isinstance(v, pathlib.Path) else v for k, v in vars(args).items() if k != "out"},
        "data": {"train_seed": TRAIN_SEED, "validation_seed": VALIDATION_SEED, "generation_seconds": round(generation_seconds, 1)},
        "training_seconds": round(time.time() - started, 1),
        "final_validation": final,
        "history": history,
    }
    (args.out / "vit_log.json").write_text(json.dumps(log, indent=1) + "\n")
    print(json.dumps({"final_validation": final, "training_seconds": log["training_seconds"]}))


if __name__ == "__main__":
    main()
