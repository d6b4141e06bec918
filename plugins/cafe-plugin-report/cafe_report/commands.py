"""The ``cafe report``, ``cafe features`` and ``cafe analyze`` commands."""

from __future__ import annotations

import argparse
import pathlib
from typing import Any

from cafe_core.cli_types import at_least_one, latent_indices, non_negative, share

__all__ = ["AnalyzeCommand", "FeaturesCommand", "ReportCommand"]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-dir", type=pathlib.Path, default=None,
                        help="folder the spec's relative paths are taken from (default: the spec file's folder, "
                             "or the working directory for a stored spec)")
    parser.add_argument("--device", default="auto", help="where the model runs: auto (default), cpu, cuda")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


class ReportCommand:
    """``cafe report DIR``: the HTML report of a run directory (``DIR/report/index.html``)."""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add the command's arguments."""
        parser.add_argument("run_dir", type=pathlib.Path, help="a run directory (the --out of cafe run)")
        parser.add_argument("--out", type=pathlib.Path, default=None, help="report folder (default: DIR/report)")
        parser.add_argument("--max-targets", type=non_negative, default=100,
                            help="targets drawn, the first explained ones in store order (default 100)")
        parser.add_argument("--per-page", type=at_least_one, default=20, help="targets per page (default 20)")
        parser.add_argument("--reference", default="activation_map",
                            help="attributor the others are compared with, target by target (default activation_map)")
        parser.add_argument("--seed", type=int, default=None, help="seed of the intervals (default: the run's)")
        parser.add_argument("--resamples", type=at_least_one, default=2000, help="bootstrap resamples (default 2000)")
        parser.add_argument("--cause-share", type=share, default=0.5,
                            help="share of positive relevance the outlined cause patches hold (default 0.5)")
        parser.add_argument("--sanity-targets", type=non_negative, default=8,
                            help="targets the sanity checks recompute; 0 skips them (default 8)")
        parser.add_argument("--random-directions", type=at_least_one, default=3,
                            help="random directions per target in the random-direction control (default 3)")
        parser.add_argument("--include", type=pathlib.Path, action="append", default=[], metavar="DIR",
                            help="output of another command kept outside the run directory, drawn in the report "
                                 "by the plugin that reads it (e.g. a `cafe graph --out DIR` folder); repeatable")
        _common(parser)

    def run(self, args: argparse.Namespace) -> int:
        """Write the report and print where it is."""
        index = self.write(
            args.run_dir, out=args.out, base_dir=args.base_dir, device=args.device, max_targets=args.max_targets,
            per_page=args.per_page, reference=args.reference, seed=args.seed, resamples=args.resamples,
            cause_share=args.cause_share, sanity_targets=args.sanity_targets,
            random_directions=args.random_directions, progress=False if args.no_progress else None,
            include=args.include,
        )
        print(f"report: {index}")
        return 0

    def write(self, run_dir: str | pathlib.Path, out: str | pathlib.Path | None = None, **options: Any) -> pathlib.Path:
        """Write the report of ``run_dir`` (see :class:`cafe_report.writer.ReportOptions` for ``options``).

        This is what ``cafe_core.report(...)`` calls.
        """
        from .writer import write_report

        return write_report(run_dir, out=pathlib.Path(out) if out is not None else None, **options)


class FeaturesCommand:
    """``cafe features SPEC --latents ... --out DIR``: feature pages of latents over the spec's dataset."""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add the command's arguments."""
        parser.add_argument("spec", help="TOML run spec (backbone, SAE, dataset and attributors are used)")
        parser.add_argument("--latents", type=latent_indices, required=True, help="latent indices, e.g. 12,40,7")
        parser.add_argument("--out", type=pathlib.Path, required=True, help="folder of the pages")
        parser.add_argument("--layer", type=int, default=None, help="the SAE's layer, when the spec has several")
        parser.add_argument("--count", type=at_least_one, default=6, help="images per ranking (default 6)")
        parser.add_argument("--attributor", default=None,
                            help="label of the attributor drawing the iERFs (default: the spec's attnlrp, cp_lrp "
                                 "or integrated_gradients, in this order, else its first causal one)")
        parser.add_argument("--images", type=at_least_one, default=None,
                            help="stream only the first N images (default: all, or run.limit)")
        parser.add_argument("--cause-share", type=share, default=0.5,
                            help="share of positive relevance the cause patches hold (default 0.5)")
        _common(parser)

    def run(self, args: argparse.Namespace) -> int:
        """Write the pages and print where they are."""
        from .features import FeatureOptions, write_feature_pages
        from .rebuild import prepare_spec

        plan = prepare_spec(args.spec, args.base_dir, args.device)
        options = FeatureOptions(latents=args.latents, out=args.out, layer=args.layer, count=args.count,
                                 attributor=args.attributor, images=args.images, cause_share=args.cause_share,
                                 progress=False if args.no_progress else None)
        print(f"feature pages: {write_feature_pages(plan, options)}")
        return 0


class AnalyzeCommand:
    """``cafe analyze nonlocal SPEC``: the share of non-local latents per layer, with intervals."""

    def configure(self, parser: argparse.ArgumentParser) -> None:
        """Add the analyses as sub-commands."""
        analyses = parser.add_subparsers(dest="analysis", required=True)
        nonlocal_ = analyses.add_parser(
            "nonlocal", help="sample latents per layer, explain each at its top token, count the non-local ones",
            description="Sample latents per patch-token SAE of the spec, explain each at its most active patch "
                        "token over the dataset, and call it non-local when its own patch holds less than "
                        "--threshold of the positive relevance. The spec's [targets] and [[metrics]] are not used.",
        )
        nonlocal_.add_argument("spec", help="TOML run spec (backbone, SAEs, dataset and attributors are used)")
        nonlocal_.add_argument("--latents", type=at_least_one, default=100,
                               help="latents sampled per layer (default 100)")
        nonlocal_.add_argument("--images", type=at_least_one, default=None,
                               help="stream only the first N images (default: all, or run.limit)")
        nonlocal_.add_argument("--attributor", default=None,
                               help="label of the attributor (default: the spec's attnlrp, cp_lrp or "
                                    "integrated_gradients, in this order, else its first causal one)")
        nonlocal_.add_argument("--threshold", type=share, default=0.5,
                               help="non-local below this own-patch share (default 0.5)")
        nonlocal_.add_argument("--seed", type=int, default=None, help="sampling seed (default: the spec's run.seed)")
        nonlocal_.add_argument("--out", type=pathlib.Path, default=None,
                               help="folder for nonlocal.json, nonlocal.csv, nonlocal.png and index.html")
        _common(nonlocal_)

    def run(self, args: argparse.Namespace) -> int:
        """Run the analysis, print its table, write its files when --out is given."""
        from .nonlocal_analysis import NonlocalOptions, analyse_nonlocal, format_table, write_outputs
        from .rebuild import prepare_spec

        plan = prepare_spec(args.spec, args.base_dir, args.device)
        result = analyse_nonlocal(plan, NonlocalOptions(
            latents=args.latents, images=args.images, attributor=args.attributor, threshold=args.threshold,
            seed=args.seed, progress=False if args.no_progress else None))
        print(format_table(result))
        if args.out is not None:
            for path in write_outputs(result, args.out):
                print(f"wrote {path}")
        return 0
