"""The ``fastoptim`` command.

Each subcommand lives in its own module of this package and exposes two
functions: ``register(subparsers)`` adds its parser, and the parser's
``func`` default runs it.  Modules are imported lazily so that ``fastoptim
--help`` stays fast and one broken subcommand cannot take down the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand name -> module (inside fastoptim.cli) that implements it
SUBCOMMANDS = {
    "compare": "compare",
    "trajectories": "trajectories",
    "explain": "explain",
    "plot-schedule": "plot_schedule",
    "bench": "bench",
}


class CLIError(Exception):
    """A user error: printed as one line, exit status 2, no traceback."""


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump), exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(
        prog="fastoptim",
        description="fastoptim: torch.optim, at the memory-bandwidth limit.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMANDS.values():
        try:
            module = importlib.import_module(f"fastoptim.cli.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"fastoptim.cli.{module_name}":
                continue  # subcommand not shipped in this build
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except CLIError as exc:
        print(f"fastoptim {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
