"""Finding the inputs of a bulk run on disk: image files under folders, text lines in .txt files.

Standard library only, so that the ``altclip`` command checks its paths before it imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def find_images(paths: Sequence[str | Path]) -> list[Path]:
    """Image files among ``paths``, folders searched recursively (sorted); raises FileNotFoundError
    for a path that does not exist and ValueError when no image is found."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    if not found:
        raise ValueError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {', '.join(map(str, paths))}")
    return found


@dataclass
class TextLines:
    """The texts of one or more .txt files: one per non-blank line, and how many blank lines were left out."""

    lines: list[str]
    blank: int


def read_text_lines(paths: Sequence[str | Path]) -> TextLines:
    """Every line of the UTF-8 files ``paths`` that holds more than whitespace, in order; the lines are kept
    as written (not stripped). Raises FileNotFoundError for a missing file and ValueError for a file that is
    not UTF-8 (naming the file and the byte offset)."""
    lines, blank = [], 0
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text: {e}") from e
        for line in text.splitlines():
            if line.strip():
                lines.append(line)
            else:
                blank += 1
    return TextLines(lines, blank)
