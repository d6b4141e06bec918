"""Train the default ViT of cafe-plugin-toy on the shapes dataset (see :mod:`cafe_toy.vit_training`).

Usage (from the repository root, after the README's setup)::

    .venv/bin/python plugins/cafe-plugin-toy/training/train_vit.py --out plugins/cafe-plugin-toy/cafe_toy/weights

writes ``vit.safetensors`` (float16) and ``vit_log.json`` (config, per-step loss, validation accuracy). With
the defaults it reproduces the shipped weights (on a CPU; about 10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import pathlib

import torch

from cafe_toy.assets import IMAGE_SIZE, MODEL, MODEL_KWARGS
from cafe_toy.vit_training import ViTTrainingConfig, save_vit, train_vit


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
    config = ViTTrainingConfig(
        model=MODEL, model_kwargs=MODEL_KWARGS, image_size=IMAGE_SIZE, seed=args.seed, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, train_images=args.train_images,
        validation_images=args.validation_images,
    )
    result = train_vit(config, report=lambda record: print(json.dumps(record), flush=True))
    save_vit(result, args.out)
    print(json.dumps({"final_validation": result.log["final_validation"]}))


if __name__ == "__main__":
    main()
