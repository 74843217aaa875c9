"""FAISS indexes over embedding folders: autofaiss's choice rules, search equal to exact search on small
collections, recall of the ANN indexes, and ``altclip index`` / ``altclip search DIR`` on the tiny checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import faiss  # the `index` extra: CI installs every extra
import numpy as np
import pytest
from conftest import write_images
from hypothesis import given, settings
from hypothesis import strategies as st

from altclip_adapters import AltCLIP, cli
from altclip_adapters.collection.index import build_index
from altclip_adapters.collection.index_rules import choose_index_key, parse_memory
from altclip_adapters.collection.search import exact_search, open_index, recall_at_k
from altclip_adapters.inference.embedder import Embedder
from altclip_adapters.collection.store import EmbeddingWriter


def clustered(n: int, dim: int, *, seed: int = 0, clusters: int = 50, latent: int = 16) -> np.ndarray:
    """Unit vectors around ``clusters`` centres in a random ``latent``-d subspace, plus a little noise in
    every dimension (what embeddings look like: clustered, low intrinsic dimension)."""
    rng = np.random.default_rng(seed)
    latent = min(latent, dim)
    basis = np.linalg.qr(rng.normal(size=(dim, latent)))[0].T
    centres = rng.normal(size=(clusters, latent))
    z = centres[rng.integers(0, clusters, n)] + 0.6 * rng.normal(size=(n, latent))
    x = (z @ basis + 0.02 * rng.normal(size=(n, dim))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_folder(path, images: np.ndarray, texts: np.ndarray | None = None, *, shard_rows: int = 1000, model: str = "m"):
    writer = EmbeddingWriter(path, model=model, dtype="float32")
    for shard, start in enumerate(range(0, len(images), shard_rows)):
        stop = min(start + shard_rows, len(images))
        writer.write_shard(
            shard,
            image_embeddings=images[start:stop],
            text_embeddings=None if texts is None else texts[start:stop],
            metadata=[{"key": f"k{i}", "image_path": f"img/{i}.jpg", "caption": f"caption {i}"} for i in range(start, stop)],
        )
    return path


def numpy_top_k(embeddings: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ embeddings.T
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, rows, 1), rows


# choice rules ------------------------------------------------------------------------------------
# Expected keys computed by running autofaiss 2.18's own get_optimal_index_keys_v2 (first choice) on each case.
AUTOFAISS_CHOICES = [
    ((999, 768, "4G"), "Flat"),
    ((5000, 768, "4G"), "HNSW15"),
    ((1_000_000, 768, "4G"), "HNSW32"),
    ((1_000_000, 768, "3G"), "HNSW18"),
    ((100_000, 768, "300M"), "HNSW9"),
    ((20_000, 64, "5.5M"), "IVF512,Flat"),
    ((100_000, 768, "250M"), "OPQ256_1024,IVF1024_HNSW32,PQ256x8"),
    ((500_000, 768, "1.2G"), "OPQ256_1024,IVF2048_HNSW32,PQ256x8"),
    ((2_000_000, 512, "1G"), "OPQ256_768,IVF16384_HNSW32,PQ256x8"),
    ((20_000_000, 768, "4G"), "OPQ128_896,IVF65536_HNSW32,PQ128x8"),
    ((400_000_000, 768, "100G"), "OPQ256_1024,IVF131072_HNSW32,PQ256x8"),
]


@pytest.mark.parametrize("args, key", AUTOFAISS_CHOICES)
def test_index_choice_follows_autofaiss(args, key):
    assert choose_index_key(*args) == key


def test_a_budget_too_small_for_any_index_is_refused():
    with pytest.raises(ValueError, match="do not fit in 10M even with PQ4"):
        choose_index_key(2_000_000, 64, "10M")


@pytest.mark.parametrize("text, size", [("4G", 4 * 2**30), ("512MB", 512 * 2**20), ("1.5k", 1536), ("16B", 16), ("2t", 2 * 2**40)])
def test_parse_memory(text, size):
    assert parse_memory(text) == size


@pytest.mark.parametrize("text", ["4", "G", "4GiB", "-1G", "4 G B"])
def test_parse_memory_refuses_what_it_cannot_read(text):
    with pytest.raises(ValueError, match="not a memory size"):
        parse_memory(text)


# exact search ------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40), dim=st.integers(1, 8), queries=st.integers(1, 5), k=st.integers(1, 50),
    chunk=st.integers(1, 17), metric=st.sampled_from(["ip", "l2"]), seed=st.integers(0, 2**16),
)
def test_exact_search_equals_numpy(n, dim, queries, k, chunk, metric, seed):
    rng = np.random.default_rng(seed)
    x, q = rng.normal(size=(n, dim)).astype(np.float32), rng.normal(size=(queries, dim)).astype(np.float32)
    scores, rows = exact_search([x[i : i + chunk] for i in range(0, n, chunk)], q, k, metric=metric)
    assert scores.shape == rows.shape == (queries, k)
    full = q @ x.T if metric == "ip" else -((q[:, None, :] - x[None]) ** 2).sum(-1)
    found = min(k, n)
    expected = -np.sort(-full, axis=1)[:, :found]
    np.testing.assert_allclose(scores[:, :found] * (1 if metric == "ip" else -1), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.take_along_axis(full, rows[:, :found], 1), expected, rtol=1e-4, atol=1e-4)
    assert (rows[:, found:] == -1).all()


def test_exact_search_can_leave_each_query_row_out():
    x = clustered(50, 8)
    own = np.array([3, 17, 49])
    rows = exact_search([x[:20], x[20:]], x[own], 5, exclude=own)[1]
    assert not (rows == own[:, None]).any()
    assert (rows == numpy_top_k(x, x[own], 6)[1][:, 1:]).all()


# small collections: exact -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    images, texts = clustered(300, 16, seed=1), clustered(300, 16, seed=2)
    return write_folder(tmp_path_factory.mktemp("small") / "emb", images, texts, shard_rows=70), images, texts


@pytest.mark.parametrize("built", [False, True])
def test_search_equals_exact_numpy_search(small, built, tmp_path):
    folder, images, texts = small
    if built:
        folder = tmp_path / "emb"
        write_folder(folder, images, texts, shard_rows=70)
        infos = build_index(folder)
        assert {m: i["index_key"] for m, i in infos.items()} == {"image": "Flat", "text": "Flat"}
        assert (folder / "image.index").is_file() and json.loads((folder / "text.json").read_text())["count"] == 300
    index = open_index(folder)
    assert (index.model, index.dim, index.modalities, index.count("image")) == ("m", 16, ["image", "text"], 300)
    queries = clustered(7, 16, seed=3)
    for modality, stored in (("image", images), ("text", texts)):
        scores, rows = numpy_top_k(stored, queries, 10)
        hits = index.search(queries, 10, modality=modality)
        assert [[h.row for h in q] for q in hits] == rows.tolist()
        np.testing.assert_allclose([[h.score for h in q] for q in hits], scores, atol=1e-5)
        assert [h.rank for h in hits[0]] == list(range(1, 11))
        hit = hits[2][4]
        assert hit.metadata == {"key": f"k{hit.row}", "image_path": f"img/{hit.row}.jpg", "caption": f"caption {hit.row}"}
        assert hit.metadata == index.metadata(hit.row, modality)
    assert index.info("image")["index_key"] == ("Flat" if built else "exact")


def test_k_larger_than_the_collection_gives_every_row(small):
    hits = open_index(small[0]).search(clustered(1, 16, seed=4), 1000)
    assert sorted(h.row for h in hits[0]) == list(range(300))


def test_concurrent_searches_agree(small):
    index = open_index(small[0])
    queries = clustered(20, 16, seed=5)
    expected = index.search(queries, 5)
    results = [None] * 8

    def search(i: int) -> None:
        results[i] = index.search(queries, 5)

    threads = [threading.Thread(target=search, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == expected for r in results)


def test_search_errors_name_the_problem(small):
    index = open_index(small[0])
    with pytest.raises(ValueError, match=r"queries must be a 2-d array \[n, 16\] .*16-d embeddings of m\); got shape \(16,\)"):
        index.search(np.ones(16, np.float32), 3)
    with pytest.raises(ValueError, match=r"got shape \(1, 8\)"):
        index.search(np.ones((1, 8), np.float32), 3)
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full((1, 16), np.nan, np.float32), 3)
    with pytest.raises(ValueError, match="k must be a positive int"):
        index.search(np.ones((1, 16), np.float32), 0)
    with pytest.raises(ValueError, match="modality must be one of image, text"):
        index.search(np.ones((1, 16), np.float32), 3, modality="audio")
    with pytest.raises(IndexError, match="row 300 is outside 0..299"):
        index.metadata(300)


def test_a_folder_without_sidecar_needs_a_model(tmp_path):
    folder = write_folder(tmp_path / "emb", clustered(20, 8))
    (folder / "altclip.json").unlink()  # as clip-retrieval writes it
    with pytest.raises(FileNotFoundError, match="no altclip.json"):
        open_index(folder)
    index = open_index(folder, model="BAAI/AltCLIP")
    assert (index.model, index.dim, index.count()) == ("BAAI/AltCLIP", 8, 20)
    build_index(folder, index_key="HNSW8")  # built without a sidecar: records no model, and is used
    warnings: list[str] = []
    hits = open_index(folder, model="BAAI/AltCLIP", on_warning=warnings.append).search(clustered(20, 8)[:2], 1)
    assert [q[0].row for q in hits] == [0, 1] and warnings == []


# ANN indexes ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "n, dim, budget, key",
    [(3000, 32, "4G", "HNSW15"), (12_000, 32, "2M", "IVF512,Flat")],
)
def test_ann_recall_at_10_against_exact_search(tmp_path, n, dim, budget, key):
    data = clustered(n + 200, dim, seed=n)
    queries, stored = data[:200], data[200:]  # queries from the same distribution, not in the index
    folder = write_folder(tmp_path / "emb", stored, shard_rows=2500)
    info = build_index(folder, max_index_memory_usage=budget)["image"]
    assert info["index_key"] == key and info["count"] == n
    assert info["recall_at_k"]["recall"] >= 0.95 and info["recall_at_k"]["queries"] > 0
    assert json.loads((folder / "image.json").read_text()) == info
    index = open_index(folder)
    assert isinstance(faiss.read_index(str(folder / "image.index")), faiss.Index)
    hits = index.search(queries, 10)
    found = np.array([[h.row for h in q] for q in hits])
    truth = exact_search([stored], queries, 10)[1]
    assert recall_at_k(found, truth) >= 0.95
    np.testing.assert_allclose([h.score for h in hits[0]], (stored[found[0]] @ queries[0]), atol=1e-5)  # exact scores


def test_build_index_arguments(tmp_path):
    folder = write_folder(tmp_path / "emb", clustered(30, 8))
    info = build_index(folder, modality="image", index_key="HNSW8", metric="l2")["image"]
    assert (info["index_key"], info["metric"]) == ("HNSW8", "l2")
    hits = open_index(folder).search(clustered(1, 8, seed=1), 3)[0]
    assert [h.score for h in hits] == sorted(h.score for h in hits)  # squared distances, nearest first
    with pytest.raises(ValueError, match="metric must be 'ip' or 'l2'"):
        build_index(folder, metric="cosine")
    with pytest.raises(FileNotFoundError, match="no text embeddings"):
        build_index(folder, modality="text")


# the command -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def photos(tiny_dir, tmp_path_factory):
    """An embedding folder of 5 images (float16, as altclip embed writes it) and the tiny model's embeddings."""
    root = tmp_path_factory.mktemp("photos")
    paths = [str(p) for p in write_images(root, 5, seed=11, name=lambda i: f"img{i}.png")]
    embedder = Embedder(AltCLIP.from_pretrained(tiny_dir))
    images = embedder.images(paths).numpy()
    captions = ["一只猫", "a dog", "ein Auto", "un arbre", "海"]
    texts = embedder.texts(captions).numpy()
    folder = root / "emb"
    EmbeddingWriter(folder, model=str(tiny_dir.resolve())).write_shard(
        0, image_embeddings=images, text_embeddings=texts,
        metadata=[{"image_path": p, "caption": c, "key": f"{i:04d}"} for i, (p, c) in enumerate(zip(paths, captions))])
    return folder, paths, captions, embedder


def output_lines(capsys) -> list[str]:
    return capsys.readouterr().out.strip().splitlines()


def test_altclip_index_then_search(photos, capsys):
    folder, paths, captions, embedder = photos
    assert cli.main(["index", str(folder)]) == 0
    lines = output_lines(capsys)
    assert [line.split(":")[0] for line in lines] == ["image", "text"]
    assert "Flat over 5 " in lines[0] and lines[0].endswith(str(folder / "image.index"))

    stored = np.load(folder / "img_emb" / "img_emb_000000.npy").astype(np.float32)
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)  # float16 rows renormalised in float32, as search does
    query = embedder.texts(["una foto de un gato"]).numpy()
    scores, rows = numpy_top_k(stored, query, 3)
    assert cli.main(["search", str(folder), "una foto de un gato", "-k", "3"]) == 0
    lines = output_lines(capsys)
    assert [line.split()[0] for line in lines] == ["1", "2", "3"]
    for line, score, row in zip(lines, scores[0], rows[0]):
        assert line.split()[1] == f"{score:.4f}"
        assert line.split("  ")[-2:] == [paths[row], f'"{captions[row]}"']


def test_altclip_search_with_an_image_on_the_text_embeddings(photos, capsys):
    folder, paths, _, embedder = photos
    stored = np.load(folder / "text_emb" / "text_emb_000000.npy").astype(np.float32)
    expected = numpy_top_k(stored, embedder.images([paths[2]]).numpy(), 2)[1][0]
    assert cli.main(["search", str(folder), "--image", paths[2], "--modality", "text", "-k", "2"]) == 0
    lines = output_lines(capsys)
    assert [line.split("  ")[-2] for line in lines] == [paths[r] for r in expected]


def test_altclip_search_an_image_finds_itself_without_an_index(photos, tmp_path, capsys):
    folder, paths, _, _ = photos
    copy = tmp_path / "emb"
    EmbeddingWriter(copy, model=json.loads((folder / "altclip.json").read_text())["model"]).write_shard(
        0, image_embeddings=np.load(folder / "img_emb" / "img_emb_000000.npy").astype(np.float32),
        metadata=[{"image_path": p} for p in paths])
    assert cli.main(["search", str(copy), "--image", paths[3], "-k", "1"]) == 0
    rank, score, path = output_lines(capsys)[0].split()
    assert (rank, path) == ("1", paths[3]) and float(score) > 0.999


@pytest.mark.parametrize("argv", [["{folder}"], ["{npy}"], ["{folder}", "a cat", "--image", "{image}"], ["{folder}", "  "]])
def test_search_usage_errors_exit_2(photos, tmp_path, capsys, argv):
    folder, paths, _, _ = photos
    values = {"folder": str(folder), "image": paths[0], "npy": str(tmp_path / "x.parquet")}
    with pytest.raises(SystemExit) as exit:
        cli.main(["search", *(a.format(**values) for a in argv)])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "altclip search: error: " in err and ("give a text query or --image FILE" in err or "the query is empty" in err)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{folder}", "--image", "missing.jpg"], "no such image file: missing.jpg"),
        (["{folder}", "a cat", "--modality", "text", "--model", "{m18}"], "the index holds 16-d embeddings but the model makes"),
        (["{npy}", "a cat", "--modality", "text"], "--modality applies to an embedding folder"),
    ],
)
def test_search_errors_are_one_line(photos, m18_dir, tmp_path, capsys, argv, message):
    folder, paths, _, _ = photos
    np.save(tmp_path / "x.npy", np.ones((2, 16), np.float32))
    (tmp_path / "x.ids.json").write_text(json.dumps({"model": "m", "modality": "image", "ids": ["a", "b"]}))
    values = {"folder": str(folder), "image": paths[0], "m18": str(m18_dir), "npy": str(tmp_path / "x.npy")}
    assert cli.main(["search", *(a.format(**values) for a in argv)]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_index_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["index", str(tmp_path / "nowhere")]) == 1
    assert "no such embedding folder" in capsys.readouterr().err
    assert cli.main(["index", str(tmp_path)]) == 1
    assert "holds no embeddings" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["index", str(tmp_path), "--max-index-memory-usage", "lots"])
    assert "not a memory size: 'lots'" in capsys.readouterr().err



def test_ann_benchmark_runs_and_prints_every_figure(tmp_path):
    """benchmarks/ann.py at a small size, unattended (no timing asserted): it checks its own index against exact search."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "ann.py"
    result = subprocess.run(
        [sys.executable, str(script), "--n", "3000", "--dim", "32", "--latent", "8", "--clusters", "20",
         "--queries", "50", "--single", "5", "--rounds", "1", "--workdir", str(tmp_path)],
        check=False, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for line in ("data: 3,000 x 32 float16", "index: HNSW15 (efSearch=", "recall@10 of the index against exact search, 50 fresh queries",
                 "batch of 50, queries/s", "one at a time (5), queries/s", "EmbeddingIndex.search", "peak memory"):
        assert line in out, out
    assert float(out.split("50 fresh queries: ")[1].split()[0]) >= 0.95
