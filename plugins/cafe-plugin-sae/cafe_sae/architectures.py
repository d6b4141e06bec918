"""The SAE classes by architecture name (importing this module imports torch)."""

from __future__ import annotations

from .base import BaseSAE
from .gated import GatedSAE
from .jumprelu import JumpReLUSAE
from .relu import ReluSAE
from .topk import TopKSAE

__all__ = ["ARCHITECTURES"]

ARCHITECTURES: dict[str, type[BaseSAE]] = {
    "relu": ReluSAE,
    "topk": TopKSAE,
    "jumprelu": JumpReLUSAE,
    "gated": GatedSAE,
}
