"""``cafe sae convert IN OUT``: write any checkpoint cafe reads in cafe's own format."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["SAECommand", "convert"]


def convert(source: str | Path, out: str | Path, **params: Any) -> Path:
    """Read the checkpoint ``source`` (any supported format) and save it as a cafe checkpoint at ``out``.

    Parameters
    ----------
    source : str or pathlib.Path
        Checkpoint file or folder, or ``hf://owner/repo/path``.
    out : str or pathlib.Path
        The ``.safetensors`` file to write.
    **params
        Params of the ``"file"`` SAE (:class:`cafe_sae.params.SAEFileParams`): ``format``, ``layer``,
        ``tokens``, ``k``... wherever the checkpoint does not record them.

    Returns
    -------
    pathlib.Path
        ``out``. The converted SAE computes the same latents; its ``extra["source"]`` records where it came from.
    """
    from .io import save
    from .loading import load_any

    return save(load_any(source, **params), out)


class SAECommand:
    """The ``sae`` subcommand of ``cafe``: ``cafe sae convert IN OUT [options]``."""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add the ``convert`` subcommand and its arguments."""
        parser.description = "Tools for SAE checkpoints."
        actions = parser.add_subparsers(dest="action", required=True)
        command = actions.add_parser(
            "convert",
            help="write a checkpoint of any supported format in cafe's format",
            description="Read an SAE checkpoint (cafe, SAELens, saev, ViT-Prisma, dictionary_learning, overcomplete "
            "or a plain state dict; a file, a folder or hf://owner/repo/path) and save it as one cafe .safetensors "
            "file that computes the same latents.",
        )
        command.add_argument("source", help="checkpoint file or folder, or hf://owner/repo/path")
        command.add_argument("out", help="the .safetensors file to write")
        command.add_argument("--format", help="checkpoint format (detected by default)")
        command.add_argument("--layer", type=int, help="block the SAE reads, where the checkpoint does not say")
        command.add_argument("--tokens", help='tokens it was trained on: "patch", "cls" or "all"')
        command.add_argument("--site", help="hook point within the block, where the checkpoint does not say")
        command.add_argument("--architecture", help="relu, topk, jumprelu or gated (plain state dicts)")
        command.add_argument("--k", type=int, help="latents kept per token (TopK SAEs that do not save it)")
        bias = command.add_mutually_exclusive_group()
        bias.add_argument("--subtract-decoder-bias", dest="subtract_decoder_bias", action="store_true", default=None,
                          help="subtract the decoder bias from the input before encoding")
        bias.add_argument("--no-subtract-decoder-bias", dest="subtract_decoder_bias", action="store_false",
                          help="encode the input as it is")
        command.add_argument("--input-mean", help="saev: file of the mean activation vector, or a number")
        command.add_argument("--input-scalar", type=float, help="saev: the scalar activations were divided by")

    def run(self, args: argparse.Namespace) -> int:
        """Convert, print what was written, return the exit status."""
        from pydantic import ValidationError

        from .errors import SAEConfigError

        params = {
            name: getattr(args, name)
            for name in ("format", "layer", "tokens", "site", "architecture", "k", "subtract_decoder_bias",
                         "input_scalar")
            if getattr(args, name) is not None
        }
        if args.input_mean is not None:
            params["input_mean"] = _number_or_path(args.input_mean)
        try:
            out = convert(args.source, args.out, **params)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'params'}: {e['msg']}" for e in exc.errors())
            raise SAEConfigError(f"cannot convert {args.source}: {problems}") from None
        from .io import load

        sae = load(out)
        print(
            f"wrote {out}: {sae.architecture} SAE, d_in={sae.d_in}, d_sae={sae.d_sae}, layer={sae.layer}, "
            f"site={sae.site!r}, tokens={sae.tokens!r}, normalization={sae.normalization!r}"
        )
        return 0


def _number_or_path(value: str) -> float | Path:
    try:
        return float(value)
    except ValueError:
        return Path(value)
