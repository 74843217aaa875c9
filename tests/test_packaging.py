"""The package stays light to import and ships its registry cards."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parents[1]
ECOSYSTEMS = ("open_clip", "sentence_transformers", "langchain_core", "llama_index")


def test_import_does_not_import_any_ecosystem():
    code = f"import sys, altclip_adapters; print([m for m in {ECOSYSTEMS!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == "[]"


def test_wheel_ships_the_cards_and_the_open_clip_hook(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("altclip_adapters-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for card in ("AltCLIP", "AltCLIP-m9", "AltCLIP-m18"):
        assert f"altclip_adapters/cards/{card}.json" in names
    assert {"altclip_adapters/_autoload.py", "_altclip_adapters_autoload.py", "altclip_adapters_autoload.pth"} <= names
