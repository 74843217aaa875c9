"""Finding the inputs of a bulk run on disk: image files under folders, text lines in .txt files.

Standard library only at import time (Pillow is imported to list its formats), so that the ``altclip``
command checks its paths before it imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


def find_images(paths: Sequence[str | Path]) -> list[Path]:
    """Image files among ``paths``, folders searched recursively (sorted); a file given by name is taken
    whatever its suffix. In folders, a file is an image when its suffix (any case: ``.JPG``, ``.HEIC``) is
    one the loader reads (:func:`altclip_adapters.model.images.image_suffixes`: every format Pillow decodes, plus
    HEIF, which the loader reports as needing ``altclip-adapters[heif]`` when pillow-heif is missing, so that
    no photo is left out unseen). Raises FileNotFoundError for a path that does not exist and ValueError
    when no image is found."""
    from altclip_adapters.model.images import image_suffixes

    suffixes = image_suffixes()
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    if not found:
        raise ValueError(
            f"no image files (none of the {len(suffixes)} suffixes Pillow reads: .jpg, .png, .webp, .avif, .heic, ...) "
            f"found in {', '.join(map(str, paths))}"
        )
    return found


BOM = "\ufeff"


def is_blank(text: str) -> bool:
    """Whether a text (a line of a .txt file, a caption of a tar or parquet sample) holds nothing to embed:
    empty or only whitespace. The one rule by which bulk inputs leave texts out (skipped and counted)."""
    return not text.strip()


def split_lines(text: str) -> list[str]:
    """The lines of a text file's contents where a text editor and ``wc -l`` see them: split at ``\n`` only
    (a ``\r`` before it dropped), a leading byte-order mark dropped, a final newline ending the last line
    rather than starting another. U+2028, NEL, form feeds and other characters belong to the line."""
    lines = text.removeprefix(BOM).split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def decode_text(data: bytes) -> tuple[str, str | None]:
    """(``data`` decoded as UTF-8 with a leading byte-order mark dropped, None); for bytes that are not UTF-8,
    (the text with each bad byte replaced by U+FFFD, a line saying where the first one is)."""
    try:
        return data.decode("utf-8").removeprefix(BOM), None
    except UnicodeDecodeError as e:
        problem = f"not UTF-8 (byte {data[e.start]:#04x} at offset {e.start}): bad bytes replaced by U+FFFD"
        return data.decode("utf-8", "replace").removeprefix(BOM), problem


@dataclass
class TextLines:
    """The texts of one or more .txt files: one per non-blank line, and how many blank lines were left out."""

    lines: list[str]
    blank: int


def read_text_lines(paths: Sequence[str | Path]) -> TextLines:
    """Every line (:func:`split_lines`) of the UTF-8 files ``paths`` that is not blank (:func:`is_blank`), in
    order; the lines are kept as written (not stripped), so line ``n`` of a file without blank lines is text
    ``n``. Raises FileNotFoundError for a missing file and ValueError for a file that is not UTF-8 (naming the
    file and the byte offset)."""
    lines, blank = [], 0
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text: {e}") from e
        for line in split_lines(text):
            if is_blank(line):
                blank += 1
            else:
                lines.append(line)
    return TextLines(lines, blank)
