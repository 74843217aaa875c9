"""Printing helpers the examples share: text columns that stay aligned with Chinese, Japanese or Korean in them."""

from __future__ import annotations

import unicodedata


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
