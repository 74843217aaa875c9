"""Multilingual text and image retrieval in LangChain, with AltCLIP as the embedding model.

    python examples/langchain_retrieval.py                  # BAAI/AltCLIP from the hub (~3.5 GB, once)
    python examples/langchain_retrieval.py --model AltCLIP-m18
    python examples/langchain_retrieval.py --tiny           # offline smoke run: random weights, random answers

Needs the ``langchain`` extra (from a clone: ``pip install -e '.[langchain]'``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _display import checkpoint_or_exit, pad  # examples/_display.py: CJK-aware columns, one-line errors
from langchain_core.vectorstores import InMemoryVectorStore
from PIL import Image, ImageDraw

from altclip_adapters.integrations.langchain import AltCLIPEmbeddings

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


def draw_shapes(folder: Path) -> list[str]:
    """One PNG per shape in ``SHAPES``; returns their paths."""
    paths = []
    for name, (color, shape) in SHAPES.items():
        image = Image.new("RGB", (224, 224), "white")
        draw = ImageDraw.Draw(image)
        if shape == "polygon":
            draw.polygon([(112, 30), (30, 194), (194, 194)], fill=color)
        else:
            getattr(draw, shape)([40, 40, 184, 184], fill=color)
        paths.append(str(folder / f"{name.replace(' ', '_')}.png"))
        image.save(paths[-1])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="AltCLIP", help="registry name, hub id or checkpoint folder (default: AltCLIP)")
    parser.add_argument("--tiny", action="store_true", help="use a random tiny checkpoint built offline")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:  # the drawn images (and --tiny's checkpoint), removed at the end
        workdir = Path(tmp)
        if args.tiny:
            from altclip_adapters.model.tiny import RANDOM_WEIGHTS_BANNER, make_checkpoint

            args.model = make_checkpoint(workdir / "tiny", "tiny")
            print(RANDOM_WEIGHTS_BANNER)
        with checkpoint_or_exit():
            embeddings = AltCLIPEmbeddings(args.model, batch_size=32)

        texts = InMemoryVectorStore.from_texts(DOCUMENTS, embeddings)
        print("texts")
        for query in QUERIES:
            document, score = texts.similarity_search_with_score(query, k=1)[0]
            print(f"  {pad(repr(query), 30)} -> {document.page_content!r} ({score:.3f})")

        # Multimodal stores (Chroma's add_images, ...) call embed_image(uris=...) themselves; InMemoryVectorStore has
        # no add_images, so the image vectors go into its store directly.
        uris = draw_shapes(workdir)
        images = InMemoryVectorStore(embeddings)
        for uri, vector in zip(uris, embeddings.embed_image(uris=uris)):
            images.store[uri] = {"id": uri, "vector": vector, "text": uri, "metadata": {"kind": "image"}}
        print("images")
        for query in IMAGE_QUERIES:
            document, score = images.similarity_search_with_score(query, k=1)[0]
            print(f"  {pad(repr(query), 30)} -> {Path(document.page_content).name} ({score:.3f})")
        (vector,) = embeddings.embed_image(uris=[uris[0]])
        (document,) = images.similarity_search_by_vector(vector, k=1)
        print(f"  {pad(repr(Path(uris[0]).name), 30)} -> {Path(document.page_content).name}")


if __name__ == "__main__":
    main()
