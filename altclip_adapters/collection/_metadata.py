"""How a metadata value read from a dataset is stored in an embedding folder's metadata parquet.

Datasets disagree with themselves: img2dataset's ``.json`` says ``"width": 640`` in one sample and
``"width": "unknown"`` in another, a field is a number in one shard and a string in the next. Column types
inferred from the values of one shard would then differ from shard to shard (and within one, stop the
write). So a column's type follows from its name alone, the same in every shard:

- img2dataset's integer columns (:data:`INTEGER_COLUMNS`: ``width``, ``height``, ``original_width``,
  ``original_height``) are int64 (an integral float or a string of digits, ``"320"``, counts as its integer);
  any other value is stored as null (reported).
- Every other column is a string: strings as they are, any other value (number, bool, list, object) as its
  JSON text (``640`` -> ``"640"``, ``{"a": 1}`` -> ``'{"a": 1}'``), so nothing is lost and every row fits.
- A value over :data:`MAX_CHARS` characters is cut to that length (reported): a dataset cannot make one row
  hold megabytes.

Standard library only.
"""

from __future__ import annotations

import json
import re
from typing import Any

INTEGER_COLUMNS = frozenset({"width", "height", "original_width", "original_height"})
MAX_CHARS = 65_536


def metadata_cell(name: str, value: Any) -> tuple[int | str | None, str | None]:
    """(the stored value of ``value`` in column ``name``: an int, a str or None; what was changed to store
    it, or None when it is stored as it is or as its JSON text)."""
    if value is None:
        return None, None
    if name in INTEGER_COLUMNS:
        if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63:
            return value, None
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
            return int(value), None
        if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]{1,18}", value.strip()):
            return int(value), None
        return None, f"field {name!r} is {_short(value)}, not an integer: stored as null"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > MAX_CHARS:
        return text[:MAX_CHARS], f"field {name!r} holds {len(text):,} characters: stored cut to {MAX_CHARS:,}"
    return text, None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
