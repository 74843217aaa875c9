"""``altclip demo``: zero-shot probabilities for generated images against labels in three languages."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .. import registry
from ._common import load_embedder, model_options, warn

if TYPE_CHECKING:
    from PIL import Image

DEMO_LABELS = {
    "en": ["a red circle", "a blue square", "a green triangle"],
    "zh": ["一个红色的圆", "一个蓝色的正方形", "一个绿色的三角形"],
    "ja": ["赤い丸", "青い四角", "緑の三角形"],
}


def demo_images() -> dict[str, Image.Image]:
    """A red circle, a blue square and a green triangle on white, 224x224."""
    from PIL import Image, ImageDraw

    shapes = {}
    for name, draw_shape in (
        ("red circle", lambda d: d.ellipse((40, 40, 184, 184), fill=(220, 30, 30))),
        ("blue square", lambda d: d.rectangle((50, 50, 174, 174), fill=(30, 60, 220))),
        ("green triangle", lambda d: d.polygon([(112, 30), (200, 190), (24, 190)], fill=(30, 170, 50))),
    ):
        image = Image.new("RGB", (224, 224), "white")
        draw_shape(ImageDraw.Draw(image))
        shapes[name] = image
    return shapes


def run(args: argparse.Namespace) -> None:
    import torch

    from ..bridges.files import resolve_checkpoint
    from ..tiny import make_checkpoint

    model, label = args.model, args.model
    with tempfile.TemporaryDirectory() as tmp:
        if not Path(model).expanduser().exists() and registry.find(model) is not None:
            try:
                resolve_checkpoint(model)
            except FileNotFoundError:
                warn(f"{model} weights are not cached and the hub is out of reach; running on a RANDOM tiny checkpoint")
                model, label = str(make_checkpoint(Path(tmp) / "tiny", "tiny")), "random tiny checkpoint (meaningless probabilities)"
        embedder = load_embedder(model, args)
        images = demo_images()
        image_emb = embedder.images(list(images.values()))
        text_emb = {language: embedder.texts(labels) for language, labels in DEMO_LABELS.items()}
        scale = embedder.model.logit_scale.exp().float().item()
        print(f"zero-shot classification with {label}")
        for row, name in enumerate(images):
            print(f"image: {name}")
            for language, labels in DEMO_LABELS.items():
                probs = torch.softmax(scale * text_emb[language] @ image_emb[row], dim=0)
                print(f"  {language}: " + "  ".join(f"{text} {p:.2f}" for text, p in zip(labels, probs.tolist())))


def add_parser(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="zero-shot probabilities for generated images, labels in English, Chinese, Japanese")
    model_options(demo)
    demo.set_defaults(func=run)
