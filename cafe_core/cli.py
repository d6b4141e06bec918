"""The ``cafe`` command: ``plugins``, ``validate``, ``run``, ``show``.

Errors print one line (or one line per spec problem) and exit with status 1; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import traceback
import warnings
from typing import Sequence

from .errors import CafeError

__all__ = ["main"]


def _cmd_plugins(args: argparse.Namespace) -> int:
    from .plugins import get_host

    described = get_host().describe()
    if args.json:
        print(json.dumps(described, indent=2))
        return 0
    descriptions = {
        (kind, entry["name"]): entry["description"]
        for kind, entries in described["components"].items()
        for entry in entries
    }
    for plugin in described["plugins"]:
        version = f" {plugin['version']}" if plugin["version"] else ""
        dist = f" ({plugin['distribution']}{version})" if plugin["distribution"] else ""
        print(f"{plugin['name']}{dist}")
        for component in plugin["components"]:
            description = descriptions.get((component["kind"], component["name"]), "")
            print(f"    {component['kind']:<11} {component['name']:<26} {description}".rstrip())
    for kind, conflicts in described["conflicts"].items():
        for name, plugins in conflicts.items():
            print(f"CONFLICT {kind} {name!r} registered by {', '.join(plugins)}")
    for failure in described["failures"]:
        print(f"FAILED {failure['name']}: {failure['stage']}: {failure['error']}")
        if args.verbose:
            print("    " + failure["traceback"].rstrip().replace("\n", "\n    "))
    if described["disabled"]:
        print(f"disabled: {', '.join(described['disabled'])}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from .plan import prepare
    from .plugins import get_host
    from .resolve import resolve
    from .spec import load_spec

    host = get_host()
    spec, base_dir = load_spec(args.spec, host)
    if args.no_build:
        resolve(spec, host, base_dir)
    else:
        prepare(spec, host, base_dir)
    print(f"{args.spec}: ok")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .runner import run

    results = run(args.spec, args.out, progress=False if args.no_progress else None, paranoid=args.paranoid or None)
    print(results.format_summary())
    print(f"units: {results.execution.summary()}")
    print(f"run directory: {results.directory}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from .results import Results

    results = Results.load(args.run_dir)
    if args.csv:
        sys.stdout.write(pathlib.Path(results.to_csv()).read_text())
    else:
        print(results.format_summary())
    return 0


_CORE_COMMANDS = ("plugins", "validate", "run", "show")


def _add_plugin_commands(commands: argparse._SubParsersAction, selected: str | None) -> None:
    """Subcommands registered by plugins; only the invoked one is imported."""
    from .plugins import get_host

    for registration in get_host().registry("command"):
        if registration.name in _CORE_COMMANDS:
            print(f"warning: plugin {registration.plugin!r} registers command {registration.name!r}, which is "
                  "a core command; ignored", file=sys.stderr)
            continue
        parser = commands.add_parser(registration.name, help=registration.description)
        if registration.name == selected:
            command = registration.build()
            command.configure(parser)
            parser.set_defaults(func=command.run)


def _parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cafe", description="Causal explanations of SAE features in vision models.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True)

    plugins = commands.add_parser("plugins", help="installed plugins, their components and load failures")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.add_argument("-v", "--verbose", action="store_true", help="tracebacks of failed plugins")
    plugins.set_defaults(func=_cmd_plugins)

    validate = commands.add_parser("validate", help="check a spec and report every problem at once")
    validate.add_argument("spec", help="TOML run spec")
    validate.add_argument("--no-build", action="store_true", help="check names and params only; build nothing")
    validate.set_defaults(func=_cmd_validate)

    run = commands.add_parser("run", help="run a spec (resumes if --out holds a partial run of it)")
    run.add_argument("spec", help="TOML run spec")
    run.add_argument("--out", required=True, help="run directory")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    run.add_argument("--paranoid", action="store_true",
                     help="check that the model is unchanged after every component call (run.paranoid)")
    run.set_defaults(func=_cmd_run)

    show = commands.add_parser("show", help="summary table of a run directory")
    show.add_argument("run_dir", help="a run directory")
    show.add_argument("--csv", action="store_true", help="print the full tidy table as CSV")
    show.set_defaults(func=_cmd_show)
    _add_plugin_commands(commands, selected)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cafe`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    warnings.simplefilter("default", DeprecationWarning)  # a renamed spec key is the user's to fix: show it
    selected = next((a for a in argv if not a.startswith("-")), None)
    try:
        args = _parser(selected).parse_args(argv)
    except CafeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        return int(args.func(args) or 0)
    except CafeError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader (`cafe plugins | head`) stopped reading: end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted; results written so far are kept, rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns any failure into an exit status
        if args.debug:
            traceback.print_exc()
        print(f"error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
