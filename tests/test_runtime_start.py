"""Fast start: what a command imports before its model loads, and a bad query image failing before that."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

HEAVY = ("transformers", "timm", "torchvision", "openvino")


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)


def test_pipeline_and_integrations_import_no_model_library():
    code = (
        "import sys, altclip_adapters.inference.embedder, altclip_adapters.inference.runtimes, altclip_adapters.integrations._embedder; "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    result = python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_search_with_an_unreadable_image_fails_before_the_model_loads(tiny_dir, tmp_path):
    index = tmp_path / "index.npy"
    np.save(index, np.eye(2, 16, dtype=np.float32))
    index.with_suffix(".ids.json").write_text(json.dumps({"ids": ["a", "b"], "model": str(tiny_dir)}))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code = (
        "import sys; from altclip_adapters.cli import main; "
        f"status = main(['search', {str(index)!r}, '--image', {str(corrupt)!r}]); "
        f"print(status, [m for m in {HEAVY!r} if m in sys.modules])"
    )
    result = python(code)
    assert result.stdout.strip() == "1 []", result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("altclip: error: ") and "corrupt.jpg" in line
