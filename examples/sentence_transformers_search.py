"""Multilingual text and image search with sentence-transformers, AltCLIP as the model.

    python examples/sentence_transformers_search.py                  # BAAI/AltCLIP from the hub (~3.5 GB, once)
    python examples/sentence_transformers_search.py --model AltCLIP-m18
    python examples/sentence_transformers_search.py --tiny           # offline smoke run: random weights, random answers

Encodes texts in several languages and a few drawn images into one space, searches both with
queries in other languages, then saves the model twice: as a folder that needs this package
(``trust_remote_code=True``) and as a plain sentence-transformers folder that does not.
Needs the ``sentence-transformers`` extra (from a clone: ``pip install -e '.[sentence-transformers]'``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _display import checkpoint_or_exit, pad  # examples/_display.py: CJK-aware columns, one-line errors
from PIL import Image, ImageDraw
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import semantic_search
from transformers.utils import logging as transformers_logging

from altclip_adapters.integrations.sentence_transformers import export_native, load

DOCUMENTS = [
    "The cat sleeps on the sofa all afternoon.",
    "Der Hund spielt im Garten mit einem Ball.",  # German
    "东京是日本的首都。",  # Chinese
    "La tour Eiffel se trouve à Paris.",  # French
]
QUERIES = ["一只猫在睡觉", "a dog playing outside", "capitale du Japon", "Paris landmark"]
SHAPES = {  # name: (colour, how to draw it)
    "red circle": ("red", "ellipse"),
    "blue square": ("blue", "rectangle"),
    "green triangle": ("green", "polygon"),
}
IMAGE_QUERIES = ["一个红色的圆", "ein blaues Quadrat", "un triangle vert"]


def draw_shapes() -> dict[str, Image.Image]:
    """One picture per shape in ``SHAPES``, by name."""
    images = {}
    for name, (color, shape) in SHAPES.items():
        image = Image.new("RGB", (224, 224), "white")
        draw = ImageDraw.Draw(image)
        if shape == "polygon":
            draw.polygon([(112, 30), (30, 194), (194, 194)], fill=color)
        else:
            getattr(draw, shape)([40, 40, 184, 184], fill=color)
        images[name] = image
    return images


def search(model: SentenceTransformer, queries: list[str], corpus, names: list[str], title: str) -> None:
    hits = semantic_search(model.encode_query(queries, convert_to_tensor=True), corpus, top_k=1)
    print(title)
    for query, (hit,) in zip(queries, hits):
        print(f"  {pad(repr(query), 30)} -> {names[hit['corpus_id']]!r} ({hit['score']:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="AltCLIP", help="registry name, hub id or checkpoint folder (default: AltCLIP)")
    parser.add_argument("--tiny", action="store_true", help="use a random tiny checkpoint built offline")
    args = parser.parse_args()
    transformers_logging.disable_progress_bar()  # the script prints its results; transformers' loading bars add noise
    # The two saved copies of the model (several GB with real weights) and --tiny's checkpoint: removed at the end
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.tiny:
            from altclip_adapters.model.tiny import RANDOM_WEIGHTS_BANNER, make_checkpoint

            args.model = make_checkpoint(workdir / "tiny", "tiny")
            print(RANDOM_WEIGHTS_BANNER)

        with checkpoint_or_exit():
            model = load(args.model)  # a plain SentenceTransformer: AltCLIPModule -> Normalize, cosine similarity
        search(model, QUERIES, model.encode_document(DOCUMENTS, convert_to_tensor=True), DOCUMENTS, "texts")
        images = draw_shapes()
        image_vectors = model.encode(list(images.values()), convert_to_tensor=True)
        search(model, IMAGE_QUERIES, image_vectors, list(images), "images")

        model.save(str(workdir / "altclip-st"))  # reload: SentenceTransformer(folder, trust_remote_code=True)
        export_native(model, workdir / "altclip-native")  # reload anywhere: SentenceTransformer(folder)
        native = SentenceTransformer(str(workdir / "altclip-native"))
        same = np.allclose(native.encode(DOCUMENTS), model.encode(DOCUMENTS), atol=1e-5)
        print(f"saved twice (in a temporary folder, removed on exit); the plain folder gives the same embeddings: {same}")


if __name__ == "__main__":
    main()
