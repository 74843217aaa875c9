"""``altclip demo``: zero-shot probabilities for generated images against labels in three languages."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from altclip_adapters.model import registry
from altclip_adapters.cli._common import command_parser, load_embedder, model_options, warn

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
    from altclip_adapters.model.files import checkpoint_source, download

    source = checkpoint_source(args.model)  # a bad name or path fails here, before torch is imported
    with tempfile.TemporaryDirectory() as tmp:
        model, banner = args.model, None
        if isinstance(source, str) and registry.find(args.model) is not None:
            try:
                model = str(download(source))
            except FileNotFoundError as e:
                from altclip_adapters.model.tiny import RANDOM_WEIGHTS_BANNER, make_checkpoint

                warn(f"{e}; running on a RANDOM tiny checkpoint instead")
                model, banner = str(make_checkpoint(Path(tmp) / "tiny", "tiny")), RANDOM_WEIGHTS_BANNER
        import torch

        embedder = load_embedder(model, args)
        images = demo_images()
        image_emb = embedder.images(list(images.values()))
        text_emb = {language: embedder.texts(labels) for language, labels in DEMO_LABELS.items()}
        scale = embedder.model.logit_scale.exp().float().item()
        if banner:
            print(banner)
        print(f"zero-shot classification with {'a random tiny checkpoint' if banner else args.model}")
        for row, name in enumerate(images):
            print(f"image: {name}")
            for language, labels in DEMO_LABELS.items():
                probs = torch.softmax(scale * text_emb[language] @ image_emb[row], dim=0)
                print(f"  {language}: " + "  ".join(f"{text} {p:.2f}" for text, p in zip(labels, probs.tolist())))


def add_parser(sub: argparse._SubParsersAction) -> None:
    demo = command_parser(
        sub, "demo", "zero-shot probabilities for three drawn shapes, labels in English, Chinese and Japanese",
        [
            "altclip demo                        # BAAI/AltCLIP (downloads ~3.5 GB once; offline: a random tiny model)",
            "altclip demo --model AltCLIP-m18 --device cpu",
        ],
    )
    model_options(demo, bulk=False)
    demo.set_defaults(func=run)
