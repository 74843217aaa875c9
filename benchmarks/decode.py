"""JPEG decoding for embedding: the full decode against libjpeg's reduced (DCT-scaled) decode, in one run.

    python benchmarks/decode.py                       # 16 phone-sized JPEGs, ViT-B/32-shaped random weights
    python benchmarks/decode.py --checkpoint BAAI/AltCLIP --images 32 --size 4032x3024

Both paths read the same files with ``altclip_adapters.model.images.load_image`` and resize and crop them with the
BAAI preprocessing (shortest edge 224, centre crop 224); the reduced path passes ``draft=448``: JPEGs are
decoded at the coarsest 1/2, 1/4 or 1/8 scale that keeps the shortest edge at least twice the resize target.
One process, one thread (images/s per core), the two paths alternating for a few rounds, each keeping its best.
Fidelity: the largest uint8 pixel difference after resize and crop, and the smallest cosine similarity of an
image embedding to the full decode's (default model: transformers' ViT-B/32 vision shape, random weights).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from altclip_adapters import AltCLIP
from altclip_adapters.model.images import load_image
from altclip_adapters.model.processor import ImageTransform
from altclip_adapters.model.tiny import make_checkpoint


def write_jpegs(folder: Path, count: int, width: int, height: int) -> list[Path]:
    """Photo-like JPEGs (smooth shapes, texture, sensor noise), quality 90."""
    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    paths = []
    for i in range(count):
        phase = rng.uniform(0, 6.3, 3)
        channels = [
            128 + 80 * np.sin(yy / (40 + 9 * i) + p) * np.cos(xx / (55 + 7 * i) - p) + 30 * np.sin((xx + yy) / 7.0 + p)
            for p in phase
        ]
        noisy = np.stack(channels, -1) + rng.normal(0, 6, (height, width, 3))
        paths.append(folder / f"{i}.jpg")
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(paths[-1], quality=90)
    return paths


def pixels(transform: ImageTransform, paths: list[Path], draft: int | None) -> torch.Tensor:
    return torch.stack([
        transform.resize_crop(torch.from_numpy(np.array(load_image(path, draft=draft))).permute(2, 0, 1))
        for path in paths
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", default="4000x3000", help="WIDTHxHEIGHT of the generated JPEGs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--checkpoint", help="model for the embedding cosines (default: ViT-B/32-shaped random weights)")
    args = parser.parse_args()
    width, height = map(int, args.size.lower().split("x"))
    torch.set_num_threads(1)
    transform = ImageTransform()  # BAAI/AltCLIP's preprocessing
    draft = 2 * transform.shortest_edge
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), args.images, width, height)
        best = {"full decode": float("inf"), f"draft={draft}": float("inf")}
        results = {}
        for _ in range(args.rounds):
            for name, setting in (("full decode", None), (f"draft={draft}", draft)):
                start = time.perf_counter()
                results[name] = pixels(transform, paths, setting)
                best[name] = min(best[name], time.perf_counter() - start)
        folder = args.checkpoint or make_checkpoint(Path(tmp) / "b32", "b32")
        model = AltCLIP.from_pretrained(folder).eval()
        with torch.inference_mode():
            exact, reduced = (
                model.encode_image(transform.normalize(results[name]), normalize=True) for name in best
            )
    full, fast = (args.images / seconds for seconds in best.values())
    print(f"{args.images} JPEGs of {width}x{height}, one thread, best of {args.rounds} rounds")
    print(f"full decode      {full:7.2f} images/s per core")
    print(f"draft={draft:<10}{fast:7.2f} images/s per core   x{fast / full:.2f}")
    diff = (results["full decode"].int() - results[f"draft={draft}"].int()).abs()
    print(f"pixels after resize and crop: max |diff| {diff.max().item()} levels, mean {diff.float().mean().item():.3f}")
    print(f"embedding cosine to the full decode: min {torch.nn.functional.cosine_similarity(exact, reduced).min().item():.5f}"
          f" ({Path(str(folder)).name})")


if __name__ == "__main__":
    main()
