"""The ``cafe graph`` and ``cafe interlayer`` commands."""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import Any

from cafe_core.cli_types import at_least_one, latent_indices, share

__all__ = ["GraphCommand", "InterlayerCommand"]


def _sae_ref(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def _sources(text: str) -> list[int | str]:
    return [_sae_ref(part) for part in text.replace(" ", "").split(",") if part]


def _names(text: str) -> list[str]:
    return [part for part in text.replace(" ", "").split(",") if part]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="TOML run spec (backbone, SAEs, dataset; an optional [interlayer] table)")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="output folder")
    parser.add_argument("--target", type=_sae_ref, default=None,
                        help="the SAE whose latents are explained: a label or a layer (default: the top one)")
    parser.add_argument("--source", type=_sources, default=None,
                        help="earlier SAEs, by label or layer, comma-separated (default: every patch-token SAE below)")
    parser.add_argument("--attributors", type=_names, default=None,
                        help="interlayer attributors, comma-separated (gradient_x_input, integrated_gradients, "
                             "attnlrp, cp_lrp, activation, random; default: [interlayer] attributors, else the "
                             "counterparts of the spec's attributors)")
    parser.add_argument("--share", type=share, default=None, help="graph pruning: share of relevance kept per layer")
    parser.add_argument("--max-nodes", type=at_least_one, default=None, help="graph pruning: latents kept per layer")
    parser.add_argument("--base-dir", type=pathlib.Path, default=None,
                        help="folder the spec's relative paths are taken from (default: the spec file's folder)")
    parser.add_argument("--device", default=None, help="where the model runs: auto, cpu, cuda (default: the spec's)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _prepare(args: argparse.Namespace, **extra: Any):
    from .section import prepare_interlayer

    overrides = {"target": args.target, "source": args.source, "attributors": args.attributors,
                 "share": args.share, "max_nodes": args.max_nodes, **extra}
    return prepare_interlayer(args.spec, args.base_dir, args.device, overrides)


class GraphCommand:
    """``cafe graph SPEC --out DIR``: concept graphs of latents of the top SAE, down to the first SAE."""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add the command's arguments."""
        _common(parser)
        parser.add_argument("--latents", type=latent_indices, default=None,
                            help="latents of the target SAE (default: the --count most active over the images)")
        parser.add_argument("--count", type=at_least_one, default=3, help="latents when --latents is not given (3)")
        parser.add_argument("--attributor", default=None,
                            help="the attributor whose relevance weighs the edges (default: integrated_gradients, "
                                 "cp_lrp, attnlrp or gradient_x_input, the first the spec has)")
        parser.add_argument("--images", type=at_least_one, default=None,
                            help="stream only the first N images (default: all, or run.limit)")
        parser.add_argument("--images-per-latent", type=at_least_one, default=4,
                            help="images each graph is averaged over, where the latent fires most (4)")
        parser.add_argument("--engine", choices=("auto", "graphviz", "matplotlib"), default="auto",
                            help="drawing: graphviz when its Python package and `dot` are installed, else matplotlib")

    def run(self, args: argparse.Namespace) -> int:
        """Write the graphs and print where they are."""
        from .graphs import GraphOptions, write_graphs

        ip = _prepare(args)
        index = write_graphs(ip, GraphOptions(
            out=args.out, latents=args.latents, count=args.count, attributor=args.attributor, images=args.images,
            images_per_latent=args.images_per_latent, engine=args.engine,
            progress=False if args.no_progress else None))
        print(f"concept graphs: {index}")
        return 0


class InterlayerCommand:
    """``cafe interlayer faithfulness|objects SPEC --out DIR``: the interlayer measurements."""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add the analyses as sub-commands."""
        analyses = parser.add_subparsers(dest="analysis", required=True)
        faithful = analyses.add_parser(
            "faithfulness", help="interlayer insertion and deletion of every attributor over the spec's targets",
            description="Explain the spec's targets (its [[targets]] rules at the target SAE) by every interlayer "
                        "attributor through every source SAE, and score each ranking by interlayer insertion and "
                        "deletion.")
        _common(faithful)
        faithful.add_argument("--images", type=at_least_one, default=None,
                              help="only the first N images (default: all, or run.limit)")
        faithful.add_argument("--error", choices=("keep", "drop"), default=None,
                              help="the blank: reconstruction of no latents plus (keep) or without (drop) the error")
        faithful.add_argument("--unit", choices=("pair", "latent"), default=None,
                              help="insert (latent, token) pairs or whole latents")
        faithful.add_argument("--points", type=int, default=None, help="points of each curve (21)")
        faithful.set_defaults(handler=self._faithfulness)
        objects = analyses.add_parser(
            "objects", help="do the graphs of label-predicting class-token latents reach latents on the deciding objects?",
            description="For class-token latents that predict a label bit, build a concept graph per image with "
                        "every attributor and check whether its kept latents fire on the objects that decided the "
                        "label (datasets with object masks: shapes).")
        _common(objects)
        objects.add_argument("--images", type=at_least_one, default=1000, help="images searched (1000)")
        objects.add_argument("--auroc", type=float, default=0.75, help="predictive: AUROC for a label bit (0.75)")
        objects.add_argument("--per-latent", type=at_least_one, default=3, help="images per latent (3)")
        objects.set_defaults(handler=self._objects)

    def run(self, args: argparse.Namespace) -> int:
        """Run the chosen analysis."""
        return args.handler(args)

    def _faithfulness(self, args: argparse.Namespace) -> int:
        from .faithfulness import FaithfulnessOptions, evaluate_faithfulness, format_table
        from .outputs import write_faithfulness

        ip = _prepare(args, error=args.error, unit=args.unit, points=args.points)
        result = evaluate_faithfulness(ip, FaithfulnessOptions(images=args.images,
                                                                progress=False if args.no_progress else None))
        table = format_table(result)
        print(table)
        for path in write_faithfulness(result, table, args.out):
            print(f"wrote {path}")
        return 0

    def _objects(self, args: argparse.Namespace) -> int:
        from cafe_report.jsonable import finite

        from .objects import ObjectsOptions, check_objects, format_objects_table

        ip = _prepare(args)
        result = check_objects(ip, ObjectsOptions(images=args.images, auroc=args.auroc, per_latent=args.per_latent,
                                                  progress=False if args.no_progress else None))
        table = format_objects_table(result)
        print(table)
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "objects.json"
        path.write_text(json.dumps(finite(result), indent=1) + "\n")
        print(f"wrote {path}")
        return 0
