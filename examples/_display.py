"""Printing helpers the examples share: text columns that stay aligned with Chinese, Japanese or Korean in them,
and one line instead of a traceback when the checkpoint cannot be had."""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def checkpoint_or_exit() -> Iterator[None]:
    """Stop the script with one line saying what to do when the checkpoint cannot be had (not in the Hugging Face
    cache while offline, the hub out of reach, a wrong name: FileNotFoundError from altclip_adapters)."""
    try:
        yield
    except FileNotFoundError as e:
        script = Path(sys.argv[0]).name
        raise SystemExit(f"{script}: {e}; or run with --tiny (a random tiny checkpoint, offline)") from None


def display_width(text: str) -> int:
    """Terminal columns ``text`` takes: wide and full-width characters (CJK) 2, combining marks 0, others 1
    (Unicode's East Asian Width property, UAX #11)."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text
    )


def pad(text: str, width: int) -> str:
    """``text`` padded with spaces to ``width`` terminal columns (left-aligned), as ``f"{text:<{width}}"`` would
    for Latin text."""
    return text + " " * max(0, width - display_width(text))
