"""Zero-shot classification and text-image retrieval with AltCLIP, through plain open_clip calls.

The model is built by plain open_clip calls: installing altclip-adapters makes open_clip know ``AltCLIP``,
``AltCLIP-m9`` and ``AltCLIP-m18`` (pretrained tag ``baai``) in every process. The script only fetches the
weights through altclip_adapters first, so that without a network it says so in one line at once (open_clip's
own download retries for about 50 s); open_clip then reads them from the Hugging Face cache.

    python examples/open_clip_zero_shot.py                        # BAAI/AltCLIP from the hub (~3.5 GB)
    python examples/open_clip_zero_shot.py --model AltCLIP-m18    # eighteen languages
    python examples/open_clip_zero_shot.py photo1.jpg photo2.png  # your images
    python examples/open_clip_zero_shot.py --tiny                 # a random tiny checkpoint, offline
"""

from __future__ import annotations

import argparse
import tempfile

import open_clip
import torch
from _display import checkpoint_or_exit, display_width, pad  # examples/_display.py: CJK-aware columns, one-line errors
from PIL import Image

LABELS = ["red", "绿色", "bleu"]  # one class name per language; the templates mix languages too
TEMPLATES = [
    lambda c: f"a {c} square.",
    lambda c: f"一个{c}的正方形。",
    lambda c: f"un carré {c}.",
    lambda c: f"ein {c} Quadrat.",
]
CAPTIONS = ["a red square", "一个绿色的正方形", "un carré bleu", "ein gelbes Quadrat"]


def demo_images() -> list[Image.Image]:
    return [Image.new("RGB", (320, 240), color) for color in ((220, 30, 30), (30, 200, 40), (30, 40, 220))]


def tiny_model_name(folder: str) -> str:
    """A random tiny AltCLIP, written in open_clip's folder layout (``local-dir:``) under ``folder``."""
    from altclip_adapters.integrations.open_clip import save_for_open_clip
    from altclip_adapters.model.tiny import make_checkpoint

    checkpoint = make_checkpoint(f"{folder}/baai-layout", "tiny")
    return f"local-dir:{save_for_open_clip(checkpoint, f'{folder}/open_clip')}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", help="image files (default: three coloured squares)")
    parser.add_argument("--model", default="AltCLIP", help="AltCLIP, AltCLIP-m9 or AltCLIP-m18 (default: AltCLIP)")
    parser.add_argument("--tiny", action="store_true", help="use a random tiny checkpoint (no download)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:  # --tiny's checkpoint, removed at the end
        if args.tiny:
            from altclip_adapters.model.tiny import RANDOM_WEIGHTS_BANNER

            model_name, pretrained = tiny_model_name(tmp), None
            print(RANDOM_WEIGHTS_BANNER)
        else:
            # open_clip's own download code retries an unreachable hub for ~50 s; this says what to do in one line
            # (and downloads into the Hugging Face cache that open_clip then reads)
            from altclip_adapters.model.files import resolve_checkpoint

            with checkpoint_or_exit():
                resolve_checkpoint(args.model)
            model_name, pretrained = args.model, "baai"
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
        model.eval()
        tokenizer = open_clip.get_tokenizer(model_name)
    images = [Image.open(path).convert("RGB") for path in args.images] or demo_images()

    with torch.no_grad():
        classifier = open_clip.build_zero_shot_classifier(
            model, tokenizer, LABELS, TEMPLATES, device="cpu", use_tqdm=False
        )
        image_features = model.encode_image(torch.stack([preprocess(image) for image in images]), normalize=True)
        text_features = model.encode_text(tokenizer(CAPTIONS), normalize=True)
    probabilities = (model.logit_scale.exp() * image_features @ classifier).softmax(dim=-1)
    similarity = text_features @ image_features.T

    names = args.images or ["red square", "green square", "blue square"]
    width = max(display_width(repr(caption)) for caption in CAPTIONS)
    print("zero-shot:")
    for name, row in zip(names, probabilities):
        print(f"  {name}: " + ", ".join(f"{label} {p:.2f}" for label, p in zip(LABELS, row.tolist())))
    print("retrieval (best image per caption):")
    for caption, row in zip(CAPTIONS, similarity):
        print(f"  {pad(repr(caption), width)} -> {names[row.argmax().item()]} ({row.max().item():.3f})")


if __name__ == "__main__":
    main()
