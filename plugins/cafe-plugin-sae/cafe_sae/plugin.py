"""Registers the SAEs and the ``train-sae`` command of this distribution; importing it loads neither torch nor
safetensors."""

from __future__ import annotations

from cafe_core import hookimpl

from .params import RandomSAEParams, ReluSAEParams, SAEFileParams, TopKSAEParams


@hookimpl
def cafe_register_saes(register):
    register(
        "relu",
        "cafe_sae.loading:load_relu",
        params=ReluSAEParams,
        description="ReLU SAE z = ReLU(W_e (h - b_d) + b_e) from a safetensors checkpoint or plain state dict",
    )
    register(
        "topk",
        "cafe_sae.loading:load_topk",
        params=TopKSAEParams,
        description="TopK SAE z = ReLU(TopK(W_e (h - b_d) + b_e)) from a checkpoint or plain state dict",
    )
    register(
        "file",
        "cafe_sae.loading:load_file",
        params=SAEFileParams,
        description="Any SAE saved by cafe_sae.io.save; the architecture is read from the checkpoint",
    )
    register(
        "random",
        "cafe_sae.loading:make_random",
        params=RandomSAEParams,
        description="An untrained SAE drawn from a seed: the model-randomisation sanity check",
    )


@hookimpl
def cafe_register_commands(register):
    register(
        "train-sae",
        "cafe_sae.training.command:TrainSAECommand",
        description="Collect a backbone's activations and train a ReLU or TopK SAE on them (resumable)",
    )
