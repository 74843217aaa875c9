"""The checkpoint cards in ``registry/``: names, hub ids, architecture, preprocessing, tokenizer."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from .config import AltCLIPConfig


def _cards_dir() -> Path:
    packaged = Path(__file__).with_name("cards")  # inside an installed wheel
    return packaged if packaged.is_dir() else Path(__file__).parents[1] / "registry"  # a source checkout


@cache
def cards() -> dict[str, dict[str, Any]]:
    """Every card, by name (``AltCLIP``, ``AltCLIP-m9``, ``AltCLIP-m18``)."""
    found = {}
    for path in sorted(_cards_dir().glob("*.json")):
        card = json.loads(path.read_text())
        found[card["name"]] = card
    return found


def names() -> list[str]:
    return list(cards())


def find(name: str) -> dict[str, Any] | None:
    """The card for a registry name or its hub id (case-insensitive), or None."""
    lowered = name.lower()
    for card in cards().values():
        if lowered in (card["name"].lower(), card["hub"]["repo_id"].lower()):
            return card
    return None


def get(name: str) -> dict[str, Any]:
    """The card for ``name``; raises KeyError listing the known names."""
    card = find(name)
    if card is None:
        raise KeyError(f"unknown AltCLIP model {name!r}; known: {', '.join(names())}")
    return card


def config(name: str) -> AltCLIPConfig:
    """The architecture a card describes."""
    return AltCLIPConfig.from_dict(get(name)["architecture"])
