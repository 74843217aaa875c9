"""AltCLIPEmbeddings in a real LangChain vector store, against transformers and the core."""

from __future__ import annotations

import asyncio
import importlib
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import core_images, core_texts, make_images, run_example, write_images
from langchain_core.vectorstores import InMemoryVectorStore
from PIL import Image
from transformers import AltCLIPModel, AltCLIPProcessor

from altclip_adapters import AltCLIP
from altclip_adapters.integrations.langchain import AltCLIPEmbeddings

TEXTS = ["a photo of a cat", "一只狗的照片", "猫の写真", "ein Foto von einem Hund", "une voiture rouge", "x"]


@pytest.fixture(scope="module")
def core(tiny_dir):
    return AltCLIP.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def embeddings(tiny_dir):
    return AltCLIPEmbeddings(tiny_dir, batch_size=2)


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory):
    return [str(p) for p in write_images(tmp_path_factory.mktemp("lc_images"), 5, seed=3)]




def assert_ranked(found, names, query, candidates):
    """LangChain's ``(document, score)`` hits are the brute-force cosine ranking of ``candidates`` (named by
    ``names``) for ``query``, with the same scores; items closer than 1e-5 may come in either order."""
    expected = candidates @ query / (np.linalg.norm(candidates, axis=1) * np.linalg.norm(query))
    hits = [names.index(doc.page_content) for doc, _ in found]
    np.testing.assert_allclose([score for _, score in found], expected[hits], atol=1e-5)
    np.testing.assert_allclose(expected[hits], np.sort(expected)[::-1][: len(hits)], atol=1e-5)


def add_images(store: InMemoryVectorStore, uris: list[str]) -> None:
    """What a multimodal store's ``add_images`` does: vectors from ``embed_image(uris=...)``, kept with the uri."""
    for uri, vector in zip(uris, store.embeddings.embed_image(uris=uris)):
        store.store[uri] = {"id": uri, "vector": vector, "text": uri, "metadata": {"kind": "image"}}


def test_vectors_equal_transformers(tiny_dir, embeddings, image_paths):
    reference, processor = AltCLIPModel.from_pretrained(tiny_dir).eval(), AltCLIPProcessor.from_pretrained(tiny_dir)
    with torch.no_grad():
        tokens = processor(text=TEXTS, padding=True, return_tensors="pt")
        text = reference.get_text_features(**tokens).pooler_output
        pixels = processor(images=[Image.open(p) for p in image_paths], return_tensors="pt")
        image = reference.get_image_features(**pixels).pooler_output
    text, image = torch.nn.functional.normalize(text, dim=-1), torch.nn.functional.normalize(image, dim=-1)
    torch.testing.assert_close(torch.tensor(embeddings.embed_documents(TEXTS)), text, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(embeddings.embed_query(TEXTS[1])), text[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(embeddings.embed_image(uris=image_paths)), image, atol=1e-5, rtol=0)


def test_batches_of_batch_size(embeddings, image_paths):
    sizes = []
    model = embeddings._embedder.model
    projections = (model.text_projection, model.visual_projection)  # one call per forward pass
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(len(o))) for m in projections]
    try:
        vectors = embeddings.embed_documents(TEXTS[:5])
        assert sizes == [2, 2, 1]
        sizes.clear()
        embeddings.embed_image(uris=image_paths)
        assert sizes == [2, 2, 1]
    finally:
        for hook in hooks:
            hook.remove()
    assert all(isinstance(x, float) for x in vectors[0])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-6)
    one_by_one = [embeddings.embed_query(text) for text in TEXTS[:5]]
    np.testing.assert_allclose(vectors, one_by_one, atol=1e-5)


def test_text_store_ranks_like_the_core(core, embeddings):
    store = InMemoryVectorStore.from_texts(TEXTS, embeddings)
    expected = core_texts(core, TEXTS)
    for i, text in enumerate(TEXTS):
        found = store.similarity_search_with_score(text, k=len(TEXTS))
        assert found[0][0].page_content == text
        assert_ranked(found, TEXTS, expected[i], expected)


def test_images_through_embed_image(core, embeddings, image_paths):
    store = InMemoryVectorStore.from_texts(TEXTS, embeddings)
    add_images(store, image_paths)
    image_vectors = core_images(core, image_paths)
    everything = np.concatenate([core_texts(core, TEXTS), image_vectors])
    names = TEXTS + image_paths
    for path in image_paths:  # the identical image comes first
        (query,) = embeddings.embed_image(uris=[path])
        assert store.similarity_search_by_vector(query, k=1)[0].page_content == path
    for text, query in zip(TEXTS, core_texts(core, TEXTS)):  # a text finds what the core says is closest
        assert_ranked(store.similarity_search_with_score(text, k=len(names)), names, query, everything)
        is_image = lambda doc: doc.metadata.get("kind") == "image"
        images_only = store.similarity_search_with_score(text, k=len(image_paths), filter=is_image)
        assert images_only[0][0].page_content == image_paths[int(np.argmax(image_vectors @ query))]
        assert_ranked(images_only, image_paths, query, image_vectors)


def test_async_equals_sync(embeddings, image_paths):
    async def run():
        store = await InMemoryVectorStore.afrom_texts(TEXTS, embeddings)
        return (
            await embeddings.aembed_documents(TEXTS),
            await embeddings.aembed_query(TEXTS[2]),
            await embeddings.aembed_image(uris=image_paths),
            await store.asimilarity_search(TEXTS[2], k=1),
        )

    documents, query, images, found = asyncio.run(run())
    np.testing.assert_allclose(documents, embeddings.embed_documents(TEXTS), atol=1e-6)
    np.testing.assert_allclose(query, embeddings.embed_query(TEXTS[2]), atol=1e-6)
    np.testing.assert_allclose(images, embeddings.embed_image(uris=image_paths), atol=1e-6)
    assert found[0].page_content == TEXTS[2]


def test_loaded_model_and_half_precision(tiny_dir, embeddings):
    half = AltCLIPEmbeddings(AltCLIP.from_pretrained(tiny_dir), dtype=torch.bfloat16)
    vectors = half.embed_documents(TEXTS)
    np.testing.assert_allclose(vectors, embeddings.embed_documents(TEXTS), atol=0.05)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-2)


def test_context_length_truncates(tiny_dir, embeddings):
    short = AltCLIPEmbeddings(tiny_dir, context_length=8)
    long_text = "a photo of a cat " * 40
    assert short.embed_query(long_text) == short.embed_query(long_text + " and a dog")
    assert embeddings.embed_query(long_text) != short.embed_query(long_text)


def test_open_clip_route(tiny_dir, embeddings, tmp_path):
    """langchain-experimental's OpenCLIPEmbeddings runs AltCLIP through the open_clip adapter, same vectors."""
    from langchain_experimental.open_clip import OpenCLIPEmbeddings

    from altclip_adapters.integrations.open_clip import save_for_open_clip

    folder = save_for_open_clip(tiny_dir, tmp_path / "open_clip")
    theirs = OpenCLIPEmbeddings(model_name=f"local-dir:{folder}", checkpoint="")
    paths = []
    for i, image in enumerate(make_images(3, seed=5)):  # at the model's input size: open_clip resizes with PIL
        paths.append(str(tmp_path / f"native{i}.png"))
        image.resize((32, 32)).save(paths[-1])
    np.testing.assert_allclose(theirs.embed_documents(TEXTS), embeddings.embed_documents(TEXTS), atol=1e-5)
    np.testing.assert_allclose(theirs.embed_image(uris=paths), embeddings.embed_image(uris=paths), atol=1e-5)
    store = InMemoryVectorStore.from_texts(TEXTS, theirs)
    assert store.similarity_search(TEXTS[3], k=1)[0].page_content == TEXTS[3]


def test_bad_input(tiny_dir, embeddings, image_paths, tmp_path):
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        embeddings.embed_image(uris=[image_paths[0], str(tmp_path / "missing.png")])
    with pytest.raises(ValueError, match="notes.txt"):
        embeddings.embed_image(uris=[str(not_an_image)])
    with pytest.raises(TypeError, match="images must be a list; got NoneType"):
        embeddings.embed_image(uris=None)
    with pytest.raises(TypeError, match="must be a list"):
        embeddings.embed_documents("a photo of a cat")
    with pytest.raises(TypeError, match="text 1 is a int"):
        embeddings.embed_documents(["a", 3])
    with pytest.raises(ValueError, match="batch_size"):
        AltCLIPEmbeddings(tiny_dir, batch_size=0)
    with pytest.raises(ValueError, match="context_length"):
        AltCLIPEmbeddings(tiny_dir, context_length=1000)
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        AltCLIPEmbeddings("no-such-model")
    with pytest.raises(ValueError, match="no processor"):
        AltCLIPEmbeddings(AltCLIP(embeddings._embedder.model.config))


def test_missing_extra_names_it(monkeypatch):
    for name in [m for m in sys.modules if m == "langchain_core" or m.startswith("langchain_core.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "altclip_adapters.integrations.langchain")
    with pytest.raises(ImportError, match=r"pip install 'altclip-adapters\[langchain\]'"):
        importlib.import_module("altclip_adapters.integrations.langchain")


def test_integrations_package_imports_no_framework():
    code = (
        "import sys, altclip_adapters.integrations; "
        "print(sorted(m for m in sys.modules if m.startswith(('langchain', 'llama_index'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == "[]"


def test_example_runs(tiny_dir, monkeypatch, capsys):
    run_example("langchain_retrieval", tiny_dir, monkeypatch)
    assert re.search(r"'red_circle.png'\s+-> red_circle.png", capsys.readouterr().out)
