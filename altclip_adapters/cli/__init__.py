"""The ``altclip`` command: one module per subcommand, each with ``add_parser(subparsers)`` and ``run(args)``.

Parsing and printing only; the work happens in the library modules the commands call. Nothing heavy
(torch, transformers, an ecosystem) is imported before a command runs, so ``--help`` and argument errors
are instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import convert, demo, embed, search
from ._common import CLIError

COMMANDS = (demo, embed, search, convert)  # in the order ``altclip --help`` lists them

__all__ = ["CLIError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="altclip", description="AltCLIP (multilingual CLIP) from the command line")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``altclip`` command; returns the exit status (1: an error, printed as one line)."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (CLIError, OSError, ValueError, KeyError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"altclip: error: {message}", file=sys.stderr)
        return 1
    return 0

