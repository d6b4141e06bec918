"""Registers the SAEs and the ``train-sae`` and ``sae`` commands of this distribution; importing it loads neither
torch nor safetensors."""

from __future__ import annotations

from cafe_core import hookimpl

from .params import RandomSAEParams, ReluSAEParams, SAEFileParams, TopKSAEParams


@hookimpl
def cafe_register_saes(register):
    register(
        "file",
        "cafe_sae.loading:load_file",
        params=SAEFileParams,
        description="Any SAE checkpoint (cafe, SAELens, saev, ViT-Prisma, dictionary_learning, overcomplete), "
        "format detected from the path; local or hf://",
    )
    register(
        "relu",
        "cafe_sae.loading:load_relu",
        params=ReluSAEParams,
        description="A ReLU SAE from any checkpoint 'file' reads, or a plain state dict",
    )
    register(
        "topk",
        "cafe_sae.loading:load_topk",
        params=TopKSAEParams,
        description="A TopK SAE from any checkpoint 'file' reads, or a plain state dict (with k)",
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
    register(
        "sae",
        "cafe_sae.convert:SAECommand",
        description="SAE checkpoint tools: `cafe sae convert IN OUT` writes any supported checkpoint in cafe's format",
    )
