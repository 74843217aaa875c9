"""The checkpoint cards in ``registry/``: names, hub ids, architecture, preprocessing, tokenizer.

Each JSON card is parsed once, strictly, into a frozen :class:`Card` (as timm's ``PretrainedCfg``): a key the
card format does not know, a missing one or a value of the wrong type is an error naming the file and the key.
"""

from __future__ import annotations

import copy
import json
from dataclasses import MISSING, dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any

from altclip_adapters.model.config import AltCLIPConfig


@dataclass(frozen=True)
class Hub:
    """Where a released checkpoint lives on the Hugging Face hub.

    Attributes:
        repo_id: the hub repository, e.g. ``"BAAI/AltCLIP"``.
        weights: the weight file open_clip's ``baai`` tag downloads, e.g. ``"model.safetensors"``.
    """

    repo_id: str
    weights: str


@dataclass(frozen=True)
class Preprocessing:
    """``CLIPImageProcessor``'s settings (the checkpoint's preprocessor_config.json wins when present).

    Attributes:
        resize_shortest_edge: the shortest edge after resizing, in pixels.
        interpolation: ``"bicubic"`` or ``"bilinear"``.
        center_crop: the side of the square centre crop, in pixels.
        mean: per RGB channel, of values in [0, 1].
        std: per RGB channel, of values in [0, 1].
        note: free text for people.
    """

    resize_shortest_edge: int
    interpolation: str
    center_crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    note: str = ""


@dataclass(frozen=True)
class Tokenizer:
    """The checkpoint's tokenizer, as the card describes it.

    Attributes:
        type: the tokenizer family (XLM-R's sentencepiece).
        files: which files of the checkpoint hold it.
        context_length: tokens per text, as the authors trained (77).
        max_context_length: tokens the position embedding allows (512).
        note: free text for people.
    """

    type: str
    files: str
    context_length: int
    max_context_length: int
    note: str = ""


@dataclass(frozen=True)
class Card:
    """One released checkpoint. ``config()`` gives its architecture (a fresh ``AltCLIPConfig`` each call).

    Attributes:
        name: the registry name (``"AltCLIP"``, ``"AltCLIP-m9"``, ``"AltCLIP-m18"``): also the open_clip model name.
        description: one line for people.
        hub: where the weights are.
        languages: the languages the text tower was trained on (ISO 639-1 codes).
        architecture: the shapes; read them through :meth:`config`, since the dataclass itself is mutable.
        preprocessing: the image preprocessing.
        tokenizer: the tokenizer facts.
        known: known quirks of the released files, for people.
    """

    name: str
    description: str
    hub: Hub
    languages: tuple[str, ...]
    architecture: AltCLIPConfig
    preprocessing: Preprocessing
    tokenizer: Tokenizer
    known: str = ""

    @property
    def projection_dim(self) -> int:
        """The embedding size (768 for every released AltCLIP)."""
        return self.architecture.projection_dim

    def config(self) -> AltCLIPConfig:
        """The architecture the card describes (a copy: callers may change it)."""
        return copy.deepcopy(self.architecture)

    def open_clip_config(self) -> dict[str, Any]:
        """open_clip's model config for this card (the tokenizer from the hub repo)."""
        return self.architecture.to_open_clip(self.hub.repo_id, self.tokenizer.context_length)


def _values(kind: type, data: Any, where: str) -> dict[str, Any]:
    """The fields of dataclass ``kind`` from JSON ``data``: every key known, none without a default missing,
    strings, integers and lists (as tuples) of the declared kind. Raises ValueError naming ``where`` and the key."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")  # noqa: TRY004 (a bad file)
    known = {f.name: str(f.type) for f in fields(kind)}
    unknown = sorted(set(data) - set(known))
    missing = [f.name for f in fields(kind) if f.name not in data and f.default is MISSING]
    if unknown or missing:
        problems = [f"unknown key(s) {', '.join(unknown)}"] if unknown else []
        problems += [f"missing key(s) {', '.join(missing)}"] if missing else []
        raise ValueError(f"{where}: {'; '.join(problems)}")
    values = dict(data)
    for name, value in data.items():
        if known[name].startswith("tuple"):
            if not isinstance(value, list):
                raise ValueError(f"{where}.{name}: expected a list, got {value!r}")
            values[name] = tuple(value)
        elif known[name] in ("int", "str") and type(value).__name__ != known[name]:
            raise ValueError(f"{where}.{name}: expected {known[name]}, got {value!r}")
    return values


def parse_card(data: Any, source: str) -> Card:
    """A :class:`Card` from a card's JSON data, strictly.

    Args:
        data: the parsed JSON of one card.
        source: where it came from (a path), for the error message.

    Returns:
        The card.

    Raises:
        ValueError: an unknown or missing key, a value of the wrong type, or a ``projection_dim`` that differs from
            the architecture's, naming ``source`` and the key at fault.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{source}: a card is a JSON object, got {type(data).__name__}")  # noqa: TRY004 (a bad file)
    data = dict(data)
    projection_dim = data.pop("projection_dim", None)  # the card's summary of architecture.projection_dim
    values = _values(Card, data, source)
    for key, kind in {"hub": Hub, "preprocessing": Preprocessing, "tokenizer": Tokenizer}.items():
        values[key] = kind(**_values(kind, values[key], f"{source}.{key}"))
    try:
        values["architecture"] = AltCLIPConfig.from_dict(values["architecture"])
    except (TypeError, AttributeError) as e:
        raise ValueError(f"{source}.architecture: {e}") from e
    if projection_dim not in (None, values["architecture"].projection_dim):
        raise ValueError(f"{source}: projection_dim {projection_dim} differs from architecture.projection_dim "
                         f"{values['architecture'].projection_dim}")
    return Card(**values)


def _cards_dir() -> Path:
    packaged = Path(__file__).with_name("cards")  # inside an installed wheel
    return packaged if packaged.is_dir() else Path(__file__).parents[2] / "registry"  # a source checkout


@cache
def cards() -> dict[str, Card]:
    """Every card, by name (``AltCLIP``, ``AltCLIP-m9``, ``AltCLIP-m18``)."""
    found = {}
    for path in sorted(_cards_dir().glob("*.json")):
        card = parse_card(json.loads(path.read_text()), str(path))
        found[card.name] = card
    return found


def names() -> list[str]:
    """The registry names, in file-name order."""
    return list(cards())


def find(name: str) -> Card | None:
    """The card for a registry name or its hub id (case-insensitive, e.g. ``"altclip"``, ``"BAAI/AltCLIP"``), or
    None when no card has that name."""
    lowered = name.lower()
    return next((c for c in cards().values() if lowered in (c.name.lower(), c.hub.repo_id.lower())), None)


def card(name: str) -> Card:
    """The card for ``name`` (see :func:`find`).

    Raises:
        KeyError: no card has that name or hub id; the message lists the known names.
    """
    found = find(name)
    if found is None:
        raise KeyError(f"unknown AltCLIP model {name!r}; known: {', '.join(names())}")
    return found


def config(name: str) -> AltCLIPConfig:
    """The architecture the card for ``name`` describes (a fresh copy); KeyError as :func:`card`."""
    return card(name).config()
