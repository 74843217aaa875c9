"""Every example with ``--tiny``: it says the weights are random, removes its temporary files, and keeps its
columns aligned when the text in them is Chinese or Japanese."""

from __future__ import annotations

import tempfile
import unicodedata
from pathlib import Path

import pytest
from conftest import run_example

from altclip_adapters.tiny import RANDOM_WEIGHTS_BANNER

EXAMPLES = sorted(p.stem for p in (Path(__file__).parents[1] / "examples").glob("*.py") if not p.stem.startswith("_"))


def columns(text: str) -> int:
    """Terminal columns of ``text``: East Asian wide and full-width characters take two (UAX #11)."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def test_every_example_is_covered():
    assert EXAMPLES == ["langchain_retrieval", "llama_index_retrieval", "open_clip_zero_shot", "sentence_transformers_search"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_tiny_run_says_random_cleans_up_and_aligns(name, tmp_path, monkeypatch, capsys):
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where mkdtemp / TemporaryDirectory put their folders
    run_example(name, None, monkeypatch, "--tiny")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == RANDOM_WEIGHTS_BANNER
    left = [p.name for p in temp.iterdir() if not p.name.startswith("torchinductor_")]  # torch's own compile cache
    assert left == []
    rows = [line for line in out if line.startswith("  '") and " -> " in line]
    assert any(columns(row) != len(row) for row in rows)  # some rows do hold wide characters
    assert len({columns(row[: row.index(" -> ")]) for row in rows}) == 1, "\n".join(rows)
