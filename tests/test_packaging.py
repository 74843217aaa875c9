"""The package stays light to import, and its wheel ships what an installed copy needs: the registry cards where
the registry looks for them, the open_clip hook, ``py.typed``, and the one version."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import altclip_adapters
from altclip_adapters.model import registry

ROOT = Path(__file__).parents[1]
ECOSYSTEMS = ("open_clip", "sentence_transformers", "langchain_core", "llama_index")


def test_import_does_not_import_any_ecosystem():
    code = f"import sys, altclip_adapters; print([m for m in {ECOSYSTEMS!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == "[]"


def test_wheel_ships_the_cards_the_open_clip_hook_and_py_typed(tmp_path):
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    subprocess.run([*command, str(ROOT)], check=True, timeout=300)
    (wheel,) = tmp_path.glob("altclip_adapters-*.whl")
    archive = zipfile.ZipFile(wheel)
    names = set(archive.namelist())
    site = Path(altclip_adapters.__file__).parents[1]  # the checkout, or site-packages where tox installed the wheel
    cards = Path(registry.__file__).with_name("cards").relative_to(site).as_posix()  # where an installed copy looks
    for card in ("AltCLIP", "AltCLIP-m9", "AltCLIP-m18"):
        assert f"{cards}/{card}.json" in names
    assert {
        "altclip_adapters/integrations/_autoload.py",
        "_altclip_adapters_autoload.py",
        "altclip_adapters_autoload.pth",
        "altclip_adapters/py.typed",
    } <= names
    (metadata,) = [name for name in names if name.endswith(".dist-info/METADATA")]
    version = re.search(r"^Version: (.+)$", archive.read(metadata).decode(), re.MULTILINE).group(1)
    assert version == altclip_adapters.__version__  # the one version, read from the package by the build
