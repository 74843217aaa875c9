"""Indexes tied to the shards they were built from: an index behind its folder is merged with exact search,
a foreign or corrupt one falls back to exact search with one warning, ``altclip index`` updates an index
without retraining (or rebuilds it by the drift rule), tuning reports the recall it reached, and the
errors of ``altclip index`` / ``search`` name the fix."""

from __future__ import annotations

import json
import os
import shutil

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_index import clustered, numpy_top_k, photos, write_folder  # noqa: F401 (photos: a fixture)

from altclip_adapters import cli
from altclip_adapters.collection.index import build_index
from altclip_adapters.collection.search import exact_search, open_index, recall_at_k
from altclip_adapters.collection.store import EmbeddingWriter

DIM = 16


def meta(start: int, stop: int, tag: str = "") -> list[dict]:
    return [{"key": f"{tag}k{i}", "image_path": f"img/{tag}{i}.jpg"} for i in range(start, stop)]


def update(folder, fresh: np.ndarray) -> dict[int, np.ndarray]:
    """An update as incremental embed makes it: shard 1 rewritten with 150 other rows, shard 2's files
    deleted, shard 7 of 120 rows added (rows from ``fresh``). Returns the new shards: shard id -> rows."""
    writer = EmbeddingWriter(folder, model="m", dtype="float32")
    changed, added = fresh[:150], fresh[150:270]
    writer.write_shard(1, image_embeddings=changed, metadata=meta(0, 150, "changed"))
    for path in (folder / "img_emb" / "img_emb_000002.npy", folder / "metadata" / "metadata_000002.parquet"):
        path.unlink()
    writer.write_shard(7, image_embeddings=added, metadata=meta(0, 120, "added"))
    return {1: changed, 7: added}


def rows_now(images: np.ndarray, shard_rows: int, new: dict[int, np.ndarray]) -> tuple[np.ndarray, list[str]]:
    """The folder's rows in reading order after :func:`update` (shards 0, 1 changed, 3.., 7 added), with keys."""
    shards = {i: images[s : s + shard_rows] for i, s in enumerate(range(0, len(images), shard_rows))}
    keys = {i: [f"k{j}" for j in range(s, min(s + shard_rows, len(images)))] for i, s in enumerate(range(0, len(images), shard_rows))}
    del shards[2], keys[2]
    for sid, rows in new.items():
        shards[sid] = rows
        keys[sid] = [f"{'changed' if sid == 1 else 'added'}k{j}" for j in range(len(rows))]
    order = sorted(shards)
    return np.concatenate([shards[i] for i in order]), [k for i in order for k in keys[i]]


def assert_exact(index, stored: np.ndarray, keys: list[str], queries: np.ndarray, k: int = 10) -> None:
    scores, rows = numpy_top_k(stored, queries, k)
    hits = index.search(queries, k)
    assert [[h.row for h in q] for q in hits] == rows.tolist()
    np.testing.assert_allclose([[h.score for h in q] for q in hits], scores, atol=1e-5)
    assert [[h.metadata["key"] for h in q] for q in hits] == [[keys[r] for r in q] for q in rows.tolist()]


@pytest.fixture
def flat(tmp_path):
    images = clustered(800 + 270 + 20, DIM, seed=1)  # one distribution: the folder's rows, an update's rows, queries
    return write_folder(tmp_path / "emb", images[:800], shard_rows=200), images


# an index behind its folder ---------------------------------------------------------------------------
def test_an_index_behind_the_folder_is_merged_with_exact_search(flat):
    folder, images = flat
    assert build_index(folder)["image"]["index_key"] == "Flat"
    stored, keys = rows_now(images[:800], 200, update(folder, images[800:1070]))
    warnings: list[str] = []
    index = open_index(folder, on_warning=warnings.append)
    assert index.count() == len(stored) == 670
    assert_exact(index, stored, keys, np.concatenate([clustered(8, DIM, seed=3), stored[[0, 250, 600]]]))
    assert len(warnings) == 1
    assert "image.index is behind the folder: it holds 2 of the folder's 4 shards" in warnings[0]
    assert "2 new or changed shard(s) (270 rows) are searched exactly" in warnings[0]
    assert warnings[0].endswith(f"altclip index {folder}")


@pytest.mark.parametrize("keep_times", [True, False])
def test_an_index_copied_from_another_folder_is_not_trusted(tmp_path, keep_times):
    """Same row count, same model, other rows: must not answer img_0302 for img_0301."""
    a = write_folder(tmp_path / "a", clustered(600, DIM, seed=1), shard_rows=300)
    mine = clustered(600, DIM, seed=2)
    b = write_folder(tmp_path / "b", mine, shard_rows=300)
    build_index(a)
    for name in ("image.index", "image.json"):
        (shutil.copy2 if keep_times else shutil.copy)(a / name, b / name)
    warnings: list[str] = []
    index = open_index(b, on_warning=warnings.append)
    hits = index.search(mine[[301, 5]], 3)
    assert [q[0].row for q in hits] == [301, 5] and hits[0][0].metadata["key"] == "k301"
    assert_exact(index, mine, [f"k{i}" for i in range(600)], clustered(5, DIM, seed=4))
    assert len(warnings) == 1 and warnings[0].endswith(f"altclip index {b}")
    assert ("it holds 0 of the folder's 2 shards" if keep_times else "is not the file image.json describes") in warnings[0]


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "empty json", "json of another model", "bad shard record", "bad parameter"])
def test_a_corrupt_index_falls_back_to_exact_search(flat, damage):
    folder, images = flat
    build_index(folder)
    path, info = folder / "image.index", folder / "image.json"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "random bytes":  # and a json that describes the new file, so FAISS itself reads it
        path.write_bytes(np.random.default_rng(0).bytes(4096))
        st = path.stat()
        info.write_text(json.dumps({**json.loads(info.read_text()), "index_file": f"{st.st_size}:{st.st_mtime_ns}"}))
    elif damage == "empty json":
        info.write_text("")
    elif damage == "bad shard record":
        info.write_text(json.dumps({**json.loads(info.read_text()), "shards": {"x": {"rows": "many"}}}))
    elif damage == "bad parameter":
        info.write_text(json.dumps({**json.loads(info.read_text()), "index_param": "efSearch=lots"}))
    else:
        info.write_text(json.dumps({**json.loads(info.read_text()), "model": "other"}))
    warnings: list[str] = []
    index = open_index(folder, on_warning=warnings.append)
    index.load()  # as a server does at start: the warning comes now
    assert len(warnings) == 1
    assert_exact(index, images[:800], [f"k{i}" for i in range(800)], clustered(6, DIM, seed=3))
    expected = {"truncated": "is not the file image.json describes", "random bytes": "cannot be read by FAISS",
                "empty json": "image.json cannot be read", "json of another model": "embeddings of other, not",
                "bad shard record": "image.json is damaged", "bad parameter": "names a search parameter FAISS refuses"}[damage]
    assert len(warnings) == 1 and expected in warnings[0] and "searching image embeddings exactly" in warnings[0]


def test_altclip_search_warns_once_and_answers(photos, tmp_path, capsys):  # noqa: F811 (the fixture imported above)
    folder = tmp_path / "emb"
    shutil.copytree(photos[0], folder)
    assert cli.main(["index", str(folder), "--modality", "image"]) == 0
    capsys.readouterr()
    (folder / "image.index").write_bytes((folder / "image.index").read_bytes()[:50])  # truncated
    assert cli.main(["search", str(folder), "--image", photos[1][3], "-k", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.out.split()[:1] == ["1"] and captured.out.split()[2] == photos[1][3]
    assert captured.err.startswith("altclip: ") and captured.err.count("\n") == 1
    assert f"searching image embeddings exactly: rebuild the index with altclip index {folder}" in captured.err


# incremental index -----------------------------------------------------------------------------------
def test_incremental_flat_index_equals_exact_search(flat, capsys):
    folder, images = flat
    build_index(folder)
    stored, keys = rows_now(images[:800], 200, update(folder, images[800:1070]))
    assert cli.main(["index", str(folder)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("image: updated without retraining: +270 rows from 2 new or changed shard(s), "
                           "-400 rows of 2 changed or removed shard(s): Flat over 670 16-d vectors")
    info = json.loads((folder / "image.json").read_text())
    assert sorted(info["shards"]) == ["0", "1", "3", "7"] and info["count"] == 670
    assert faiss.read_index(str(folder / "image.index")).ntotal == 670
    warnings: list[str] = []
    assert_exact(open_index(folder, on_warning=warnings.append), stored, keys, clustered(8, DIM, seed=3))
    assert warnings == []
    assert cli.main(["index", str(folder)]) == 0
    assert capsys.readouterr().out.startswith("image: up to date: nothing to do: Flat over 670")


def test_incremental_ivf_index_matches_a_build_from_scratch(tmp_path):
    pool = clustered(2000 + 270 + 50, DIM, seed=5)  # one distribution: rows, an update's rows, queries
    images = pool[:2000]
    folder = write_folder(tmp_path / "emb", images, shard_rows=400)
    first = build_index(folder, index_key="IVF16,Flat")["image"]
    assert first["action"] == "built from scratch (no index yet)"
    stored, keys = rows_now(images, 400, update(folder, pool[2000:2270]))
    info = build_index(folder)["image"]  # no key given: the recorded one is kept
    assert info["action"].startswith("updated without retraining") and info["index_key"] == "IVF16,Flat"
    queries = pool[2270:]
    hits = open_index(folder).search(queries, 10)
    truth_scores, truth = numpy_top_k(stored, queries, 10)
    found = np.array([[h.row for h in q] for q in hits])
    assert recall_at_k(found, truth) >= 0.95
    np.testing.assert_allclose([[h.score for h in q] for q in hits], np.einsum("nkd,nd->nk", stored[found], queries), atol=1e-5)
    assert [[h.metadata["key"] for h in q] for q in hits] == [[keys[r] for r in q] for q in found.tolist()]
    scratch = tmp_path / "scratch"
    shutil.copytree(folder, scratch)
    again = build_index(scratch, rebuild=True)["image"]
    assert again["action"] == "built from scratch (--rebuild)" and again["count"] == info["count"] == 1470
    hits2 = open_index(scratch).search(queries, 10)
    found2 = np.array([[h.row for h in q] for q in hits2])
    assert recall_at_k(found2, truth) >= 0.95
    np.testing.assert_allclose([[h.score for h in q] for q in hits2], np.einsum("nkd,nd->nk", stored[found2], queries), atol=1e-5)
    both = (found[:, :1] == found2[:, :1]).ravel()  # where both found the same best row, it is the true best
    assert both.mean() >= 0.95 and (found[both, 0] == truth[both, 0]).mean() >= 0.95
    np.testing.assert_allclose(truth_scores[both, 0], np.einsum("nd,nd->n", stored[found[both, 0]], queries[both]), atol=1e-5)


def test_hnsw_adds_without_retraining_and_rebuilds_to_remove(tmp_path):
    images = clustered(1500, DIM, seed=8)
    folder = write_folder(tmp_path / "emb", images, shard_rows=500)
    assert build_index(folder)["image"]["index_key"] == "HNSW15"
    EmbeddingWriter(folder, model="m", dtype="float32").write_shard(5, image_embeddings=clustered(100, DIM, seed=9), metadata=meta(0, 100, "n"))
    assert build_index(folder)["image"]["action"].startswith("updated without retraining: +100 rows from 1 new")
    EmbeddingWriter(folder, model="m", dtype="float32").write_shard(0, image_embeddings=clustered(500, DIM, seed=10), metadata=meta(0, 500, "c"))
    info = build_index(folder)["image"]
    assert info["action"] == "built from scratch (HNSW15 cannot be updated in place: remove_ids not implemented for this type of index)"
    assert info["count"] == 1600 and faiss.read_index(str(folder / "image.index")).ntotal == 1600


def test_an_index_is_rebuilt_when_the_collection_drifted(tmp_path):
    folder = write_folder(tmp_path / "emb", clustered(400, DIM, seed=1), shard_rows=200)
    build_index(folder, index_key="IVF4,Flat")
    writer = EmbeddingWriter(folder, model="m", dtype="float32")
    for sid in range(2, 7):
        writer.write_shard(sid, image_embeddings=clustered(200, DIM, seed=sid), metadata=meta(0, 200, str(sid)))
    info = build_index(folder)["image"]
    assert info["action"] == "built from scratch (1,400 rows is more than twice the 400 it was built on)"
    assert info["trained_rows"] == 1400
    rules = build_index(folder, index_key=None, rebuild=True)["image"]
    assert rules["index_key"] == "HNSW15" and rules["rule_key"] == "HNSW15"


def test_an_index_is_rebuilt_when_the_rules_choose_another_kind(flat):
    folder, images = flat
    assert build_index(folder)["image"]["index_key"] == "Flat"
    EmbeddingWriter(folder, model="m", dtype="float32").write_shard(4, image_embeddings=images[800:1000], metadata=meta(800, 1000))
    info = build_index(folder)["image"]
    assert info["action"] == "built from scratch (the rules choose HNSW15 for 1,000 rows, the index was built as Flat)"
    assert info["index_key"] == "HNSW15" and sorted(info["shards"]) == ["0", "1", "2", "3", "4"]


# tuning that tells the truth -------------------------------------------------------------------------
def test_identical_vectors_reach_the_target_recall_or_say_why(tmp_path, capsys):
    pool = clustered(5050, 64, seed=0)
    x = pool[:5000].copy()
    duplicates = np.random.default_rng(1).choice(5000, 900, replace=False)
    x[duplicates] = x[duplicates[0]]
    folder = write_folder(tmp_path / "emb", x, shard_rows=2500)
    assert cli.main(["index", str(folder)]) == 0
    out, err = capsys.readouterr()
    info = json.loads((folder / "image.json").read_text())
    assert out.startswith(f"image: built from scratch (no index yet): {info['index_key']} ({info['index_param']}) over 5,000 64-d")
    assert err == f"altclip: image: {info['note']}\n"
    assert info["recall_at_k"]["recall"] >= 0.95 and info["recall_at_k"]["queries"] == 500
    assert info["index_key"].startswith("IVF") and info["rule_key"] == "HNSW15"
    assert info["note"].startswith("HNSW15 reached recall@10 0.") and "identical vectors" in info["note"]
    queries = np.concatenate([x[duplicates[:5]], pool[5005:]])
    hits = open_index(folder).search(queries, 10)
    truth = exact_search([x], queries, 10)[0]
    found = np.array([[h.score for h in q] for q in hits])
    assert np.mean(found >= truth[:, -1:] - 1e-5) >= 0.95  # ties counted: any 10 of the 900 copies are right


def test_flat_records_no_recall_instead_of_a_measured_one(flat):
    info = build_index(flat[0])["image"]
    assert info["recall_at_k"] == {"k": 10, "recall": None, "queries": 0, "why_none": "Flat is exact search: nothing to tune"}


# the reader's API --------------------------------------------------------------------------------------
def test_column_and_is_current(flat):
    folder, _ = flat
    table = pa.table({"key": [f"x{i}" for i in range(3)], "extra": [1, 2, 3]})
    EmbeddingWriter(folder, model="m", dtype="float32").write_shard(9, image_embeddings=clustered(3, DIM, seed=11), metadata=table)
    index = open_index(folder)
    assert index.column("key") == [f"k{i}" for i in range(800)] + ["x0", "x1", "x2"]
    assert index.column("extra") == [None] * 800 + [1, 2, 3]
    assert index.metadata(801) == {"key": "x1", "image_path": None, "caption": None, "extra": 2}
    with pytest.raises(KeyError, match="no metadata column 'nope'"):
        index.column("nope")
    assert index.is_current()
    build_index(folder)
    assert not index.is_current() and open_index(folder).is_current()
    os.utime(folder / "metadata" / "metadata_000000.parquet")
    index = open_index(folder)
    (folder / "img_emb" / "img_emb_000009.npy").unlink()
    assert not index.is_current()


def test_metadata_is_read_only_for_the_shards_hit(flat):
    """Hits in shard 0 only: the other shards' parquet files are never opened (one is made unreadable)."""
    folder, images = flat
    index = open_index(folder)
    assert index.column_names() == ["key", "image_path", "caption"]
    (folder / "metadata" / "metadata_000003.parquet").write_bytes(b"not a parquet file")
    hits = index.search(images[:3], 1)  # each finds itself
    assert hits[0][0].row == 0 and all(h.row < 200 for q in hits for h in q)
    with pytest.raises(pa.ArrowInvalid):
        pq.read_table(folder / "metadata" / "metadata_000003.parquet")


def test_float16_scores_never_exceed_one(tmp_path):
    x = clustered(50, DIM, seed=12)
    EmbeddingWriter(tmp_path / "emb", model="m").write_shard(0, image_embeddings=x, metadata=meta(0, 50))  # float16
    stored = np.load(tmp_path / "emb" / "img_emb" / "img_emb_000000.npy").astype(np.float32)
    assert (stored @ stored.T).max() > 1.0  # what an unrenormalised dot product prints
    unit = stored / np.linalg.norm(stored, axis=1, keepdims=True)
    hits = open_index(tmp_path / "emb").search(unit, 1)
    assert max(q[0].score for q in hits) <= 1.0 + 1e-6 and [q[0].row for q in hits] == list(range(50))


# errors that name the fix -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key, message",
    [("HNSWx", "FAISS cannot make an index of key 'HNSWx' (could not parse index string HNSWx)"),
     ("IVF1024,Flat", "IVF1024,Flat has 1,024 lists but there are 300 rows to train them: use at most IVF4,Flat"),
     ("HNSW1", "HNSW1 has 1 links per node; a graph needs at least 2"),  # FAISS itself would abort the process
     ("NSG32,Flat", "FAISS cannot build NSG32,Flat over 300 rows: NSG does not support incremental addition")],
)
def test_index_keys_faiss_refuses_are_one_line(tmp_path, capsys, key, message):
    folder = write_folder(tmp_path / "emb", clustered(300, DIM), shard_rows=300)
    assert cli.main(["index", str(folder), "--index-key", key]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_index_of_a_single_file_output_and_of_a_0_row_folder(tmp_path, capsys):
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    assert cli.main(["index", str(tmp_path / "x.parquet")]) == 1
    err = capsys.readouterr().err
    assert "x.parquet is a single-file output of altclip embed" in err and f"altclip search {tmp_path / 'x.parquet'} QUERY" in err
    EmbeddingWriter(tmp_path / "empty", model="m").write_shard(0, image_embeddings=np.zeros((0, 8), np.float32), metadata=[])
    assert cli.main(["index", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert "holds no image rows (every shard altclip embed wrote there was empty): nothing to index" in err
    assert "it holds image embeddings" not in err and len(err.strip().splitlines()) == 1
    index = open_index(tmp_path / "empty")
    assert index.count() == 0 and index.search(np.ones((1, 8), np.float32) / 8**0.5, 3) == [[]]
    assert cli.main(["search", str(tmp_path / "empty"), "a cat"]) == 1
    assert "holds no image rows (every shard altclip embed wrote there was empty): nothing to search" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        cli.main(["search", str(tmp_path / "x.parquet")])  # no query: a usage error, before the file is read
    assert usage.value.code == 2 and "give a text query or --image FILE" in capsys.readouterr().err


def test_hits_of_a_lossy_index_carry_exact_scores(tmp_path):
    """PCA (or PQ) indexes store approximate vectors: their hits are rescored from the stored rows, so a
    score is the cosine exact search gives and merging with exactly searched shards ranks alike."""
    x = clustered(600, DIM, seed=13)
    folder = write_folder(tmp_path / "emb", x, shard_rows=200)
    build_index(folder, index_key="PCA8,Flat")
    index = open_index(folder)
    hits = index.search(x[:5], 5)
    found = np.array([[h.row for h in q] for q in hits])
    scores = np.array([[h.score for h in q] for q in hits])
    np.testing.assert_allclose(scores, np.einsum("nkd,nd->nk", x[found], x[:5]), atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()
    raw = faiss.read_index(str(folder / "image.index")).search(x[:5], 5)[0]
    assert np.abs(raw - scores).max() > 1e-3  # what the index alone would have said
