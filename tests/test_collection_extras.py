"""Without an optional dependency the collection modules name the extra that installs it, in the one format of
``altclip_adapters.extras.require``; a search without faiss still answers, exactly."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from altclip_adapters.collection.files import write_embedding_file
from altclip_adapters.collection.index import build_index
from altclip_adapters.collection.search import exact_search, open_index
from altclip_adapters.collection.store import EmbeddingWriter
from altclip_adapters.extras import MissingExtra


def hide(monkeypatch, package: str) -> None:
    """Make ``package`` unimportable for one test, as it is without its extra (an import of it then raises
    ModuleNotFoundError)."""
    for name in {package, *(m for m in sys.modules if m.startswith(package + "."))}:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.fixture
def folder(tmp_path):
    rows = np.random.default_rng(0).normal(size=(1200, 16)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    writer = EmbeddingWriter(tmp_path / "emb", model="m", dtype="float32")
    writer.write_shard(0, image_embeddings=rows, metadata=[{"key": str(i)} for i in range(len(rows))])
    return tmp_path / "emb", rows


def test_building_an_index_without_faiss_names_the_extra(folder, monkeypatch):
    hide(monkeypatch, "faiss")
    with pytest.raises(MissingExtra, match=r"^FAISS indexes needs faiss \(not installed\): "
                                           r"pip install 'altclip-adapters\[index\]'$"):
        build_index(folder[0])
    assert not (folder[0] / "image.index").exists()


def test_an_index_without_faiss_is_searched_exactly_with_one_warning(folder, monkeypatch):
    path, rows = folder
    assert build_index(path)["image"]["index_key"] == "HNSW15"
    hide(monkeypatch, "faiss")
    warnings: list[str] = []
    index = open_index(path, on_warning=warnings.append)
    hits = index.search(rows[:3], 5)
    assert [[hit.row for hit in query] for query in hits] == exact_search([rows], rows[:3], 5)[1].tolist()
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("FAISS indexes needs faiss (not installed): pip install 'altclip-adapters[index]'; "
                                  "searching image embeddings exactly"), warnings[0]


def test_writing_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    hide(monkeypatch, "pyarrow")
    rows = np.eye(2, dtype=np.float32)
    with pytest.raises(MissingExtra, match=r"^Writing \.parquet needs pyarrow \(not installed\): "
                                           r"pip install 'altclip-adapters\[cli\]'$"):
        write_embedding_file(tmp_path / "x.parquet", ["a", "b"], rows, {})
    assert not (tmp_path / "x.parquet").exists()
    write_embedding_file(tmp_path / "x.npy", ["a", "b"], rows, {})  # a .npy file needs no pyarrow
    assert np.load(tmp_path / "x.npy").tolist() == rows.tolist()
