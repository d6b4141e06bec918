"""Argument types shared by the ``cafe`` subcommands that plugins register (for ``argparse``'s ``type=``)."""

from __future__ import annotations

import argparse

__all__ = ["at_least_one", "latent_indices", "non_negative", "share"]


def non_negative(text: str) -> int:
    """A whole number >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text}")
    return value


def at_least_one(text: str) -> int:
    """A whole number >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text}")
    return value


def share(text: str) -> float:
    """A share in (0, 1]."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a share in (0, 1], got {text}")
    return value


def latent_indices(text: str) -> list[int]:
    """Comma-separated latent indices, such as ``12,40,7``."""
    try:
        values = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected latent indices such as 12,40,7, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected latent indices >= 0 such as 12,40,7, got {text!r}")
    return values
