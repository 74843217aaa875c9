"""Shared fixtures: tiny random AltCLIP checkpoints in the BAAI layout, and generated images."""

from __future__ import annotations

import importlib.util
import os
import shutil
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from altclip_adapters.model.tiny import make_checkpoint

# Tests compare the torch runtime with transformers at 1e-5; tests/test_runtime.py runs the others (and "auto")
os.environ.setdefault("ALTCLIP_RUNTIME", "torch")

ROOT = Path(__file__).parents[1]
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


def write_images(folder: Path, count: int, seed: int, name=lambda i: f"image{i}.png") -> list[Path]:
    """Save ``make_images(count, seed)`` into ``folder`` as ``name(i)`` (the suffix picks the format); their paths."""
    paths = [Path(folder) / name(i) for i in range(count)]
    for path, image in zip(paths, make_images(count, seed=seed)):
        image.save(path)
    return paths


def run_example(name: str, model_dir, monkeypatch, *options: str) -> None:
    """Run ``examples/<name>.py``'s ``main()`` in this process with ``--model model_dir`` (or, for ``model_dir``
    None, just ``options``, e.g. ``--tiny``), as ``python examples/<name>.py`` would (examples/ on sys.path)."""
    path = Path(__file__).parents[1] / "examples" / f"{name}.py"
    monkeypatch.syspath_prepend(str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    model = ["--model", str(model_dir)] if model_dir is not None else []
    monkeypatch.setattr(sys, "argv", [str(path), *model, *options])
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


# serve (tests/test_serve.py, tests/test_serve_page.py) ---------------------------------------------
SCENES = [  # (caption, background, shape colour, shape): generated pictures with captions in several languages
    ("一只红色的圆", (250, 240, 225), (210, 40, 40), "circle"), ("a blue square", (235, 240, 250), (40, 80, 200), "square"),
    ("緑の三角形", (235, 248, 235), (40, 150, 60), "triangle"), ("un cercle jaune", (60, 60, 70), (240, 200, 40), "circle"),
    ("ein violettes Quadrat", (245, 245, 245), (130, 60, 170), "square"), ("橙色的三角形", (30, 40, 60), (250, 140, 30), "triangle"),
    ("una stella grigia", (220, 230, 240), (110, 110, 120), "circle"), ("검은 사각형", (250, 250, 210), (20, 20, 20), "square"),
]


def draw_scene(background, colour, shape, size=(120, 90)) -> Image.Image:
    from PIL import ImageDraw

    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    box = (size[0] // 4, size[1] // 6, size[0] * 3 // 4, size[1] * 5 // 6)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=colour)
    return image


def write_collection(root: Path, model_dir: Path, rows: list[dict]) -> Path:
    """An embedding folder ``root/emb`` (clip-retrieval layout, float32) of ``rows``: dicts with ``image``
    (a PIL image embedded by the core), ``image_path`` and ``caption`` (the metadata). Returns the folder."""
    from altclip_adapters import AltCLIP
    from altclip_adapters.collection.store import EmbeddingWriter

    core = AltCLIP.from_pretrained(model_dir)
    writer = EmbeddingWriter(root / "emb", model=str(model_dir), dtype="float32")
    writer.write_shard(
        0,
        image_embeddings=core_images(core, [row["image"] for row in rows]),
        text_embeddings=core_texts(core, [row["caption"] for row in rows]),
        metadata=[{"image_path": row["image_path"], "caption": row["caption"]} for row in rows],
    )
    return root / "emb"


@pytest.fixture(scope="session")
def scene_collection(tmp_path_factory, tiny_dir):
    """(embedding folder, image folder): the eight SCENES as PNG files under ``images/``, image paths
    recorded relative to the folder's parent (the image base)."""
    root = tmp_path_factory.mktemp("scenes")
    (root / "images").mkdir()
    rows = []
    for i, (caption, background, colour, shape) in enumerate(SCENES):
        image = draw_scene(background, colour, shape)
        image.save(root / "images" / f"scene_{i}.png")
        rows.append({"image": image, "image_path": f"images/scene_{i}.png", "caption": caption})
    return write_collection(root, tiny_dir, rows), root


# shard inputs (tests/test_shards.py, tests/test_ray.py) -------------------------------------------------
SHARD_CAPTIONS = ["a red photo", "一张照片", "写真", "ein Foto", "une photo", "una foto", "фото", "사진"]


def write_tar(path: Path, samples: list[dict[str, bytes]]) -> Path:
    """A webdataset tar as img2dataset writes it: each sample's members ``{key}.{ext}``, in order."""
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for sample in samples:
            for ext, payload in sample.items():
                if ext != "__key__":
                    info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return path


@pytest.fixture(scope="session")
def shard_inputs(tmp_path_factory):
    """Eight captioned images written three ways: ``images/`` (PNG and JPEG files, sorted by name), two
    webdataset tars (``00000.tar``: samples 0-3, ``00001.tar``: samples 4-7, with .txt captions and
    img2dataset's .json) and one img2dataset parquet (the eight rows plus a failed download). Returns
    a dict: root, files (paths in sample order), captions, keys, tars, parquet."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("shards")
    (root / "images").mkdir()
    files, payloads, keys = [], [], []
    for i, image in enumerate(make_images(8, seed=3)):
        path = root / "images" / f"{i:02d}.{'png' if i % 2 else 'jpg'}"
        image.save(path)
        files.append(path)
        payloads.append(path.read_bytes())
        keys.append(f"{i:09d}")
    samples = [
        {"__key__": key, path.suffix[1:]: data, "txt": caption.encode(),
         "json": json.dumps({"key": key, "url": f"https://example.com/{i}.jpg", "width": 40}).encode()}
        for i, (key, path, data, caption) in enumerate(zip(keys, files, payloads, SHARD_CAPTIONS))
    ]
    tars = [write_tar(root / "00000.tar", samples[:4]), write_tar(root / "00001.tar", samples[4:])]
    parquet = root / "00000.parquet"
    pq.write_table(pa.table({
        "url": [f"https://example.com/{i}.jpg" for i in range(9)], "caption": SHARD_CAPTIONS + ["lost"],
        "key": keys + ["000000008"], "status": ["success"] * 8 + ["failed_to_download"],
        "error_message": [None] * 8 + ["timeout"], "txt": SHARD_CAPTIONS + [None], "jpg": payloads + [None],
    }), parquet)
    return {"root": root, "files": files, "captions": list(SHARD_CAPTIONS), "keys": keys, "tars": tars, "parquet": parquet}


# runs stopped mid-way (tests/test_collections.py, tests/test_run.py) ---------------------------------------------
def stop_mid_run(argv: list[str], sig: int, total: int, after: int = 4) -> tuple[int, str]:
    """Run ``altclip embed argv`` in a subprocess, send ``sig`` once its progress bar passes ``after`` items (of
    ``total``), and return (exit status, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "altclip_adapters.cli", "embed", *argv], env=env,
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, bufsize=1)
    err: list[str] = []
    thread = threading.Thread(target=lambda: err.extend(iter(lambda: process.stderr.read(1), "")), daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            done = [int(n) for n in re.findall(rf"(\d+)/{total}", "".join(err))]
            if done and max(done) >= after:
                process.send_signal(sig)
                break
            time.sleep(0.02)
        status = process.wait(timeout=60)
    finally:
        process.kill()
    thread.join(timeout=10)
    return status, "".join(err)


def big_picture(path: Path) -> None:
    """A 3000x3000 PNG (270 KB: smooth gradients) that takes a good fraction of a second to decode and resize."""
    x = np.linspace(0, 255, 3000, dtype=np.float32)
    pixels = np.stack([np.add.outer(x, x) / 2, np.add.outer(x, -x) % 256, np.outer(np.ones(3000), x)], -1)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def slow_photos(folder: Path) -> Path:
    """``folder`` made and filled with 12 photos in name order: 4 small ones (00-03), then 8 copies of
    :func:`big_picture` (04-11), slow to decode, so that a signal sent after the small ones finds work left."""
    folder.mkdir()
    for i, image in enumerate(make_images(4, seed=9)):
        image.save(folder / f"{i:02d}.png")
    big_picture(folder / "04.png")
    for i in range(5, 12):
        shutil.copy(folder / "04.png", folder / f"{i:02d}.png")
    return folder


# Ray (tests/test_ray.py, tests/test_ray_readers.py, tests/test_run.py) ------------------------------------------
@pytest.fixture(scope="session")
def local_ray():
    """One local Ray for the session, two CPUs (every actor pool leaves one to Ray Data's read tasks), without
    progress bars; left running when the session already had one."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    if started:
        ray.shutdown()
