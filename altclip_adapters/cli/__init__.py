"""The ``altclip`` command: one module per subcommand, each with ``add_parser(subparsers)`` and ``run(args)``.

Parsing and printing only; the work happens in the library modules the commands call. Nothing heavy
(torch, transformers, an ecosystem) is imported before a command has checked its arguments and paths, so
``--help``, argument errors and bad paths answer at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from altclip_adapters.cli import convert, demo, embed, export, index, search, serve
from altclip_adapters.cli._common import CLIError, HelpFormatter

COMMANDS = (demo, embed, index, search, convert, export, serve)  # in the order ``altclip --help`` lists them

__all__ = ["CLIError", "build_parser", "main"]

EXAMPLES = """\
examples:
  altclip demo                                   # zero-shot on three drawn shapes, labels in three languages
  altclip embed photos/ --out photos.parquet     # every image under photos/, resumable
  altclip search photos.parquet "一只在沙发上睡觉的猫" -k 5
  altclip convert AltCLIP --to open_clip --out altclip-openclip/

`altclip COMMAND --help` describes each command. Exit status: 0 done, 1 an error (one line on stderr),
2 a usage error, 130 interrupted (Ctrl-C)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="altclip",
        description="AltCLIP (multilingual CLIP) from the command line.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``altclip`` command; returns the exit status: 0, 1 (an error, printed as one line), 2 (usage,
    from argparse) or 130 (interrupted by Ctrl-C, printed as one line)."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (CLIError, OSError, ValueError, KeyError) as e:
        message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        print(f"altclip: error: {' '.join(message.split())}", file=sys.stderr)  # one line, whatever raised it
        return 1
    except KeyboardInterrupt as e:
        print(f"altclip: {e.args[0] if e.args else 'interrupted'}", file=sys.stderr)
        return 130
    return 0
