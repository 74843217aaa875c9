"""AltCLIPEmbedding in real LlamaIndex indexes (text and multi-modal, sync and async), against the core."""

from __future__ import annotations

import asyncio
import base64
import importlib
import io
import re
import sys

import numpy as np
import pytest
from conftest import core_images, core_texts, make_images, run_example
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.indices import MultiModalVectorStoreIndex
from llama_index.core.schema import ImageDocument
from pydantic import ValidationError

from altclip_adapters import AltCLIP
from altclip_adapters.integrations.llama_index import AltCLIPEmbedding

TEXTS = ["a photo of a cat", "一只狗的照片", "猫の写真", "ein Foto von einem Hund", "une voiture rouge", "x"]


@pytest.fixture(scope="module", autouse=True)
def no_llm():
    Settings.llm = None  # retrieval only: nothing here may need an LLM


@pytest.fixture(scope="module")
def core(tiny_dir):
    return AltCLIP.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def embed(tiny_dir):
    return AltCLIPEmbedding(str(tiny_dir), embed_batch_size=2)


@pytest.fixture(scope="module")
def pictures():
    """Five images: four as PNG files, the fifth as PNG bytes (an ImageDocument holding base64)."""
    return make_images(5, seed=7)


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory, pictures):
    folder = tmp_path_factory.mktemp("li_images")
    paths = []
    for i, image in enumerate(pictures[:4]):
        paths.append(str(folder / f"image{i}.png"))
        image.save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def png_bytes(pictures):
    buffer = io.BytesIO()
    pictures[4].save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def multi_modal_documents(image_paths, png_bytes):
    images = [ImageDocument(image_path=path, metadata={"name": f"image{i}"}) for i, path in enumerate(image_paths)]
    images.append(ImageDocument(image=base64.b64encode(png_bytes).decode(), metadata={"name": "image4"}))
    return [Document(text=text) for text in TEXTS] + images


NAMES = [f"image{i}" for i in range(5)]




def assert_ranked(found, names, query, candidates):
    """Retrieved nodes (``names(node)`` gives the index) are the brute-force cosine ranking of ``candidates`` for
    ``query``, with the same scores; items closer than 1e-5 may come in either order."""
    expected = candidates @ query / (np.linalg.norm(candidates, axis=1) * np.linalg.norm(query))
    hits = [names(hit.node) for hit in found]
    np.testing.assert_allclose([hit.score for hit in found], expected[hits], atol=1e-5)
    np.testing.assert_allclose(expected[hits], np.sort(expected)[::-1][: len(hits)], atol=1e-5)


def image_name(node):
    return NAMES.index(node.metadata["name"])


def test_vectors_equal_the_core(core, embed, image_paths, png_bytes, pictures):
    texts, images = core_texts(core, TEXTS), core_images(core, pictures)
    np.testing.assert_allclose(embed.get_text_embedding_batch(TEXTS), texts, atol=1e-5)
    np.testing.assert_allclose(embed.get_query_embedding(TEXTS[1]), texts[1], atol=1e-5)
    np.testing.assert_allclose(embed.get_text_embedding(TEXTS[2]), texts[2], atol=1e-5)
    inputs = image_paths + [io.BytesIO(png_bytes)]
    np.testing.assert_allclose(embed.get_image_embedding_batch(inputs), images, atol=1e-5)
    np.testing.assert_allclose(embed.get_image_embedding(io.BytesIO(png_bytes)), images[4], atol=1e-5)


def test_respects_embed_batch_size(tiny_dir, image_paths):
    embed = AltCLIPEmbedding(str(tiny_dir), embed_batch_size=3)
    model, sizes = embed._embedder.model, []
    projections = (model.text_projection, model.visual_projection)  # one call per forward pass
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(len(o))) for m in projections]
    try:
        embed.get_text_embedding_batch(TEXTS + ["y"])
        assert sizes == [3, 3, 1]
        sizes.clear()
        asyncio.run(embed.aget_image_embedding_batch(image_paths))
        assert sorted(sizes) == [1, 3]
    finally:
        for hook in hooks:
            hook.remove()
    with pytest.raises(ValidationError, match="embed_batch_size"):
        AltCLIPEmbedding(str(tiny_dir), embed_batch_size=0)


def test_round_trips_through_to_dict(tiny_dir):
    embed = AltCLIPEmbedding(str(tiny_dir), embed_batch_size=4, context_length=20)
    again = AltCLIPEmbedding.from_dict(embed.to_dict())
    assert (again.model_name, again.embed_batch_size, again.context_length) == (str(tiny_dir), 4, 20)
    assert again.get_query_embedding(TEXTS[0]) == embed.get_query_embedding(TEXTS[0])


def test_vector_store_index_retrieves_without_llm(core, embed):
    index = VectorStoreIndex.from_documents([Document(text=text) for text in TEXTS], embed_model=embed)
    retriever = index.as_retriever(similarity_top_k=len(TEXTS))
    expected = core_texts(core, TEXTS)
    for i, text in enumerate(TEXTS):
        found = retriever.retrieve(text)
        assert found[0].node.get_content() == text
        assert_ranked(found, lambda node: TEXTS.index(node.get_content()), expected[i], expected)


def test_multi_modal_index(core, embed, image_paths, multi_modal_documents, pictures):
    index = MultiModalVectorStoreIndex.from_documents(multi_modal_documents, embed_model=embed, image_embed_model=embed)
    retriever = index.as_retriever(similarity_top_k=len(TEXTS), image_similarity_top_k=len(NAMES))
    images = core_images(core, pictures)
    for text, query in zip(TEXTS, core_texts(core, TEXTS)):
        assert_ranked(retriever.text_to_image_retrieve(text), image_name, query, images)
    for i, path in enumerate(image_paths):
        found = retriever.image_to_image_retrieve(path)
        assert found[0].node.metadata["name"] == f"image{i}"
        assert_ranked(found, image_name, images[i], images)


def test_multi_modal_index_async(core, embed, image_paths, multi_modal_documents, pictures):
    async def run():
        index = MultiModalVectorStoreIndex.from_documents(
            multi_modal_documents, embed_model=embed, image_embed_model=embed, use_async=True
        )
        retriever = index.as_retriever(similarity_top_k=len(TEXTS), image_similarity_top_k=len(NAMES))
        by_text = [await retriever.atext_to_image_retrieve(text) for text in TEXTS]
        by_image = [await retriever.aimage_to_image_retrieve(path) for path in image_paths]
        return by_text, by_image, await retriever.aretrieve(TEXTS[0])

    by_text, by_image, mixed = asyncio.run(run())
    images, texts = core_images(core, pictures), core_texts(core, TEXTS)
    for found, query in zip(by_text, texts):
        assert_ranked(found, image_name, query, images)
    for i, found in enumerate(by_image):
        assert found[0].node.metadata["name"] == f"image{i}"
        assert_ranked(found, image_name, images[i], images)
    assert mixed[0].node.get_content() == TEXTS[0]


def test_concurrent_async_batches_equal_sync(embed, image_paths):
    many = [f"{text} {i}" for i in range(3) for text in TEXTS]

    async def run():
        gathered = await asyncio.gather(
            embed.aget_text_embedding_batch(many), embed.aget_image_embedding_batch(image_paths * 2)
        )
        embed.num_workers = 4  # LlamaIndex's worker pool path
        try:
            pooled = await embed.aget_text_embedding_batch(many)
        finally:
            embed.num_workers = None
        return gathered, pooled, await embed.aget_query_embedding(TEXTS[0])

    (texts, images), pooled, query = asyncio.run(run())
    np.testing.assert_allclose(texts, embed.get_text_embedding_batch(many), atol=1e-6)
    np.testing.assert_allclose(pooled, texts, atol=1e-6)
    np.testing.assert_allclose(images, embed.get_image_embedding_batch(image_paths * 2), atol=1e-6)
    np.testing.assert_allclose(query, embed.get_query_embedding(TEXTS[0]), atol=1e-6)


def test_bad_input(tiny_dir, embed, image_paths, tmp_path):
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    missing = str(tmp_path / "missing.png")
    make_images(1)[0].save(missing)
    document = ImageDocument(image_path=missing, metadata={"name": "gone"})  # LlamaIndex checks the file here...
    (tmp_path / "missing.png").unlink()  # ...so it goes missing before indexing
    with pytest.raises(FileNotFoundError, match="missing.png"):
        MultiModalVectorStoreIndex.from_documents([document], embed_model=embed, image_embed_model=embed)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        embed.get_image_embedding_batch([image_paths[0], missing])
    with pytest.raises(ValueError, match="notes.txt"):
        embed.get_image_embedding(str(not_an_image))
    with pytest.raises(ValueError, match="image 1: cannot read BytesIO as an image"):
        embed.get_image_embedding_batch([image_paths[0], io.BytesIO(b"not a png")])
    with pytest.raises(TypeError, match="images must be a list; got NoneType"):
        embed._get_image_embeddings(None)
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        AltCLIPEmbedding("no-such-model")


def test_missing_extra_names_it(monkeypatch):
    for name in [m for m in sys.modules if m == "llama_index" or m.startswith("llama_index.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "altclip_adapters.integrations.llama_index")
    with pytest.raises(ImportError, match=r"pip install 'altclip-adapters\[llama-index\]'"):
        importlib.import_module("altclip_adapters.integrations.llama_index")


def test_example_runs(tiny_dir, monkeypatch, capsys):
    run_example("llama_index_retrieval", tiny_dir, monkeypatch)
    assert re.search(r"'red_circle.png'\s+-> red_circle.png", capsys.readouterr().out)
