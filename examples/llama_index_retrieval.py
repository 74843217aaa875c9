"""Multilingual text and image retrieval in LlamaIndex, with AltCLIP embedding both; no LLM involved.

    python examples/llama_index_retrieval.py                  # BAAI/AltCLIP from the hub (~3.5 GB, once)
    python examples/llama_index_retrieval.py --model AltCLIP-m18
    python examples/llama_index_retrieval.py --tiny           # offline smoke run: random weights, random answers

Needs the ``llama-index`` extra (from a clone: ``pip install -e '.[llama-index]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from _display import checkpoint_or_exit, pad  # examples/_display.py: CJK-aware columns, one-line errors
from llama_index.core import Document, Settings
from llama_index.core.indices import MultiModalVectorStoreIndex
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import ImageDocument
from PIL import Image, ImageDraw

from altclip_adapters.integrations.llama_index import AltCLIPEmbedding

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

            args.model = str(make_checkpoint(workdir / "tiny", "tiny"))
            print(RANDOM_WEIGHTS_BANNER)

        with checkpoint_or_exit():
            embed = AltCLIPEmbedding(args.model, embed_batch_size=32)
        Settings.llm = None  # retrieval only
        paths = draw_shapes(workdir)
        # LlamaIndex drops nodes with neither text nor metadata: give each image document its file name
        images = [ImageDocument(image_path=path, metadata={"file_name": Path(path).name}) for path in paths]
        index = MultiModalVectorStoreIndex.from_documents(
            [Document(text=text) for text in DOCUMENTS] + images,
            embed_model=embed,
            image_embed_model=embed,
            transformations=[SentenceSplitter(chunk_size=64, chunk_overlap=8)],  # AltCLIP reads 77 tokens per chunk
        )
        retriever = index.as_retriever(similarity_top_k=1, image_similarity_top_k=1)

        print("texts")
        for query in QUERIES:
            (hit,) = retriever.text_retrieve(query)
            print(f"  {pad(repr(query), 30)} -> {hit.node.get_content()!r} ({hit.score:.3f})")
        print("images")
        for query in IMAGE_QUERIES:
            (hit,) = retriever.text_to_image_retrieve(query)
            print(f"  {pad(repr(query), 30)} -> {hit.node.metadata['file_name']} ({hit.score:.3f})")
        (hit,) = asyncio.run(retriever.aimage_to_image_retrieve(paths[0]))
        print(f"  {pad(repr(Path(paths[0]).name), 30)} -> {hit.node.metadata['file_name']} (async)")


if __name__ == "__main__":
    main()
