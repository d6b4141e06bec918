"""``cafe train-sae SPEC --out DIR``: train an SAE from a training spec."""

from __future__ import annotations

import argparse

__all__ = ["TrainSAECommand"]


class TrainSAECommand:
    """The ``train-sae`` subcommand of ``cafe`` (registered by the SAE plugin)."""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add the command's arguments."""
        parser.description = (
            "Collect a backbone's activations and train a ReLU or TopK SAE on them. Rerunning the same command "
            "resumes both the collection and the training."
        )
        parser.add_argument("spec", help="TOML training spec with [backbone], [data], [sae] and [training]")
        parser.add_argument("--out", required=True, help="output folder (activations, checkpoints, SAE, metrics)")
        parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")

    def run(self, args: argparse.Namespace) -> int:
        """Train, print the summary, return the exit status."""
        from .pipeline import train_from_spec

        result = train_from_spec(args.spec, args.out, progress=False if args.no_progress else None)
        print(result.format_summary())
        return 0
