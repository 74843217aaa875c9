"""Empty lists give empty results of the right type and shape in every public API; None, bare strings and
other non-lists are TypeErrors naming what was given (issue 10, kind 6). The empty-list contract is the
ecosystems' own: LangChain's and LlamaIndex's fake embeddings, sentence-transformers' encode."""

from __future__ import annotations

import asyncio

import pytest
import torch

from altclip_adapters import AltCLIP
from altclip_adapters.inference.embedder import Embedder


@pytest.fixture(scope="module")
def core(tiny_dir) -> AltCLIP:
    return AltCLIP.from_pretrained(tiny_dir)


def test_processor_gives_empty_batches(core):
    tokens = core.processor.tokenize([])
    assert {k: (v.shape, v.dtype) for k, v in tokens.items()} == {
        "input_ids": ((0, 0), torch.int64), "attention_mask": ((0, 0), torch.int64)}
    assert core.processor.tokenize((), pad_to_context_length=True)["input_ids"].shape == (0, 77)
    pixels = core.processor.images([])
    assert (pixels.shape, pixels.dtype) == ((0, 3, 32, 32), torch.float32)
    batch = core.processor(text=[], images=[])
    assert batch["input_ids"].shape == (0, 0) and batch["pixel_values"].shape == (0, 3, 32, 32)


def test_core_embeds_empty_batches(core):
    """transformers' AltCLIPModel cannot (it reshapes with -1); the core returns [0, projection_dim]."""
    batch = core.processor(text=[], images=[])
    with torch.no_grad():
        text = core.encode_text(batch["input_ids"], batch["attention_mask"], normalize=True)
        image = core.encode_image(batch["pixel_values"], normalize=True)
    assert (text.shape, text.dtype) == ((0, 16), torch.float32) and (image.shape, image.dtype) == ((0, 16), torch.float32)


@pytest.mark.parametrize(
    "call",
    [
        lambda p: p.tokenize(None),
        lambda p: p.tokenize(7),
        lambda p: p.tokenize({"a": 1}),
        lambda p: p.images(None),
        lambda p: p.images({"a": 1}),
        lambda p: p(text=b"bytes"),
    ],
)
def test_processor_rejects_non_lists(core, call):
    with pytest.raises(TypeError, match=r"(texts|images) must be a list; got (NoneType|int|dict|a single bytes)"):
        call(core.processor)


def test_pipeline_embedder(tiny_dir):
    embedder = Embedder(AltCLIP.from_pretrained(tiny_dir), device="cpu", batch_size=4)
    for out in (embedder.texts([]), embedder.images([])):
        assert (out.shape, out.dtype) == ((0, 16), torch.float32)
    assert list(embedder.iter_texts([])) == [] and list(embedder.iter_images([])) == []
    with pytest.raises(TypeError, match="texts must be a list; got NoneType"):
        embedder.iter_texts(None)  # raised at the call, not at the first batch
    with pytest.raises(TypeError, match="got a single str, wrap it in a list"):
        embedder.texts("a photo of a cat")
    with pytest.raises(TypeError, match="images must be a list; got NoneType"):
        embedder.images(None)
    with pytest.raises(TypeError, match="images must be a list; got a single str"):
        list(embedder.iter_images("cat.jpg"))


def test_langchain(tiny_dir, core):
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_core.vectorstores import InMemoryVectorStore

    from altclip_adapters.integrations.langchain import AltCLIPEmbeddings

    embeddings = AltCLIPEmbeddings(core, device="cpu")
    fake = DeterministicFakeEmbedding(size=16)
    assert embeddings.embed_documents([]) == fake.embed_documents([]) == []
    assert embeddings.embed_image(uris=[]) == []
    assert asyncio.run(embeddings.aembed_documents([])) == asyncio.run(fake.aembed_documents([])) == []
    assert asyncio.run(embeddings.aembed_image(uris=[])) == []
    store = InMemoryVectorStore.from_texts([], embeddings)
    assert store.similarity_search("a cat", k=1) == InMemoryVectorStore.from_texts([], fake).similarity_search("a cat", k=1)
    store.add_texts(["a photo of a cat"])
    assert store.similarity_search("a cat", k=1)[0].page_content == "a photo of a cat"
    with pytest.raises(TypeError, match="texts must be a list; got NoneType"):
        embeddings.embed_documents(None)
    with pytest.raises(TypeError, match="images must be a list; got a single str"):
        embeddings.embed_image(uris="cat.jpg")


def test_llama_index(tiny_dir):
    from llama_index.core import MockEmbedding, Settings
    from llama_index.core.indices import MultiModalVectorStoreIndex

    from altclip_adapters.integrations.llama_index import AltCLIPEmbedding

    Settings.llm = None
    embed = AltCLIPEmbedding(str(tiny_dir), device="cpu")
    mock = MockEmbedding(embed_dim=16)
    assert embed.get_text_embedding_batch([]) == mock.get_text_embedding_batch([]) == []
    assert embed.get_image_embedding_batch([]) == []
    assert asyncio.run(embed.aget_text_embedding_batch([])) == asyncio.run(mock.aget_text_embedding_batch([])) == []
    assert asyncio.run(embed.aget_image_embedding_batch([])) == []
    assert embed._get_text_embeddings([]) == [] and embed._get_image_embeddings([]) == []  # what the batches call
    index = MultiModalVectorStoreIndex.from_documents([], embed_model=embed, image_embed_model=embed)
    assert index.as_retriever(similarity_top_k=1).retrieve("a cat") == []
    with pytest.raises(TypeError, match="texts must be a list; got NoneType"):
        embed._get_text_embeddings(None)


def test_sentence_transformers(tiny_dir):
    from altclip_adapters.integrations.sentence_transformers import load

    model = load(tiny_dir, device="cpu")
    assert model.encode([]).shape == (0,)  # sentence-transformers returns before any module runs
    assert model.encode([], convert_to_tensor=True).shape == (0,)
    features = model[0].preprocess([])  # the module alone gives an empty text batch and no embedding
    assert features["modality"] == "text" and features["input_ids"].shape == (0, 0)
    assert model[0](features)["sentence_embedding"].shape == (0, 16)
