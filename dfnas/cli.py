"""The ``dfnas`` command: parses arguments and calls library functions (no pipeline logic lives here).

Subcommands: run, synthesize, inspect, eval-teacher, search, train, nb201 lookup, export.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dfnas import __version__
from dfnas.errors import DfnasError


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; each stage's sub-parsers live in ``dfnas._cli.<stage>``."""
    from dfnas._cli import run, search, synthesis

    parser = argparse.ArgumentParser(prog="dfnas", description="Data-free neural architecture search.")
    parser.add_argument("--version", action="version", version=f"dfnas {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in (run, synthesis, search):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one clear line (no traceback) and exit with status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DfnasError as e:
        print(f"dfnas {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dfnas {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
