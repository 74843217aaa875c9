"""Shared fixtures: tiny random AltCLIP checkpoints in the BAAI layout, and generated images."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from altclip_adapters.tiny import make_checkpoint

TEXTS = ["a photo of a cat", "一只狗的照片", "猫の写真", "ein Foto von einem Hund", "x"]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Tiny checkpoint, safetensors as transformers 5 writes it."""
    return make_checkpoint(tmp_path_factory.mktemp("tiny"), "tiny", "safetensors")


@pytest.fixture(scope="session")
def tiny_bin_dir(tmp_path_factory):
    """The same weights as ``tiny_dir`` in the BAAI legacy layout (transformers 4 pickle)."""
    return make_checkpoint(tmp_path_factory.mktemp("tiny_bin"), "tiny", "bin")


@pytest.fixture(scope="session")
def tiny_sharded_dir(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("tiny_sharded"), "tiny", "sharded")


@pytest.fixture(scope="session")
def m18_dir(tmp_path_factory):
    """AltCLIP-m18's structure at toy size, with transformation_pre."""
    return make_checkpoint(tmp_path_factory.mktemp("m18"), "m18", "safetensors")


def make_images(n: int = 4, seed: int = 0) -> list[Image.Image]:
    """Distinct RGB images of assorted sizes (odd ones too)."""
    rng = np.random.RandomState(seed)
    return [Image.fromarray(rng.randint(0, 256, (37 + 11 * i, 45 + 7 * i, 3), dtype=np.uint8)) for i in range(n)]


def run_example(name: str, model_dir, monkeypatch) -> None:
    """Run ``examples/<name>.py``'s ``main()`` in this process with ``--model model_dir``."""
    path = Path(__file__).parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.setattr(sys, "argv", [str(path), "--model", str(model_dir)])
    example.main()


def core_texts(core, texts) -> np.ndarray:
    """Normalised text embeddings straight from the core (the oracle for adapter rankings)."""
    with torch.no_grad():
        return core.encode_text(**core.processor.tokenize(texts), normalize=True).numpy()


def core_images(core, images) -> np.ndarray:
    """Normalised image embeddings straight from the core."""
    with torch.no_grad():
        return core.encode_image(core.processor.images(images), normalize=True).numpy()


@pytest.fixture
def images():
    return make_images()


@pytest.fixture
def texts():
    return list(TEXTS)
