"""Embedding folders in clip-retrieval's layout: written by EmbeddingWriter, read by embedding-reader (the
reader autofaiss and clip-retrieval use) and by our reader; resume by shard; the errors that name the problem."""

from __future__ import annotations

import json
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from altclip_adapters.collection.store import (
    EmbeddingWriter,
    done_shards,
    folder_modalities,
    iter_embeddings,
    read_embeddings,
    read_manifest,
    read_metadata,
)


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def rows_of(shard: int, n: int) -> list[dict]:
    return [{"key": f"{shard:05d}{i:04d}", "image_path": f"s{shard}/{i}.jpg", "caption": f"caption {shard}-{i}"} for i in range(n)]


SHARDS = {2: 3, 10: 4, 100: 2, 7: 5}  # shard id -> rows; 10 and 100 sort before 2 and 7 unless zero-padded


@pytest.fixture
def folder(tmp_path):
    """A float32 folder with image and text embeddings in four shards, written out of order."""
    out, images, texts, meta = tmp_path / "emb", {}, {}, {}
    writer = EmbeddingWriter(out, model="BAAI/AltCLIP", dtype="float32")
    for shard, n in SHARDS.items():
        images[shard], texts[shard], meta[shard] = unit_rows(n, 8, shard), unit_rows(n, 8, 1000 + shard), rows_of(shard, n)
        writer.write_shard(shard, image_embeddings=images[shard], text_embeddings=texts[shard], metadata=meta[shard])
    order = sorted(SHARDS)
    expected = {
        "image": np.concatenate([images[s] for s in order]),
        "text": np.concatenate([texts[s] for s in order]),
        "metadata": [row for s in order for row in meta[s]],
    }
    return out, expected


def test_layout_and_sidecar(folder):
    out, _ = folder
    assert sorted(p.name for p in (out / "img_emb").iterdir()) == [f"img_emb_{s:06d}.npy" for s in sorted(SHARDS)]
    assert sorted(p.name for p in (out / "text_emb").iterdir()) == [f"text_emb_{s:06d}.npy" for s in sorted(SHARDS)]
    assert sorted(p.name for p in (out / "metadata").iterdir()) == [f"metadata_{s:06d}.parquet" for s in sorted(SHARDS)]
    assert read_manifest(out) == {
        "format_version": 1, "layout": "clip-retrieval", "model": "BAAI/AltCLIP", "dim": 8, "dtype": "float32",
        "modalities": ["image", "text"],
    }
    assert folder_modalities(out) == ["image", "text"]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_our_reader_gives_the_rows_in_shard_order(folder):
    out, expected = folder
    for modality in ("image", "text"):
        embeddings, metadata = read_embeddings(out, modality)
        assert embeddings.dtype == np.float32
        np.testing.assert_allclose(embeddings, expected[modality], atol=1e-6)
        assert metadata.to_pylist() == expected["metadata"]
    assert [len(a) for a in iter_embeddings(out, "text")] == [SHARDS[s] for s in sorted(SHARDS)]


def test_embedding_reader_reads_the_folder(folder):
    """embedding-reader, as autofaiss and clip-retrieval call it: npy mode, and parquet_npy with metadata."""
    from embedding_reader import EmbeddingReader

    out, expected = folder
    for modality, sub in (("image", "img_emb"), ("text", "text_emb")):
        reader = EmbeddingReader(str(out / sub), file_format="npy")
        assert (reader.count, reader.dimension) == (len(expected[modality]), 8)
        batches = [(emb, meta) for emb, meta in reader(batch_size=5, show_progress=False)]
        np.testing.assert_allclose(np.concatenate([b[0] for b in batches]), expected[modality], atol=1e-6)

        reader = EmbeddingReader(str(out / sub), file_format="parquet_npy", metadata_folder=str(out / "metadata"),
                                 meta_columns=["key", "image_path", "caption"])
        embeddings, meta = zip(*reader(batch_size=4, show_progress=False))
        np.testing.assert_allclose(np.concatenate(embeddings), expected[modality], atol=1e-6)
        rows = [row for m in meta for row in m[["key", "image_path", "caption"]].to_dict("records")]
        assert rows == expected["metadata"]


def test_float16_is_stored_as_float16_and_read_as_float32(tmp_path):
    from embedding_reader import EmbeddingReader

    rows = unit_rows(6, 16, 0)
    EmbeddingWriter(tmp_path / "f16", model="m").write_shard(0, image_embeddings=rows, metadata=rows_of(0, 6))
    assert np.load(tmp_path / "f16" / "img_emb" / "img_emb_000000.npy").dtype == np.float16
    embeddings, _ = read_embeddings(tmp_path / "f16")
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(embeddings, rows, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-3)
    reader = EmbeddingReader(str(tmp_path / "f16" / "img_emb"), file_format="npy")
    assert reader.byte_per_item == 32  # 16 dims x 2 bytes
    np.testing.assert_array_equal(next(reader(batch_size=6, show_progress=False))[0], embeddings)


def test_rows_are_renormalised_before_storing(tmp_path):
    rows = unit_rows(4, 8, 1) * np.float32(1.004)  # within the tolerance
    EmbeddingWriter(tmp_path / "e", model="m", dtype="float32").write_shard(0, text_embeddings=rows, metadata=rows_of(0, 4))
    np.testing.assert_allclose(np.linalg.norm(read_embeddings(tmp_path / "e", "text")[0], axis=1), 1, atol=1e-6)


def test_resume_by_shard(tmp_path):
    out = tmp_path / "emb"
    writer = EmbeddingWriter(out, model="m")
    assert writer.done_shards() == set()
    writer.write_shard(0, image_embeddings=unit_rows(2, 4, 0), metadata=rows_of(0, 2))
    writer.write_shard(5, image_embeddings=np.zeros((0, 4)), metadata=[])  # every image unreadable
    writer.write_shard(3, image_embeddings=unit_rows(1, 4, 3), metadata=rows_of(3, 1))
    assert EmbeddingWriter(out, model="m").done_shards() == done_shards(out) == {0, 3, 5}
    assert not list((out / "img_emb").glob("*000005*"))  # an empty shard writes no files for readers to pair
    assert len(read_embeddings(out)[0]) == 3

    np.save(out / "img_emb" / "img_emb_000009.npy", unit_rows(2, 4, 9).astype(np.float16))  # killed before its metadata
    assert 9 not in done_shards(out)
    with pytest.raises(ValueError, match="shard 000009 is incomplete"):
        read_embeddings(out)
    writer.write_shard(9, image_embeddings=unit_rows(2, 4, 9), metadata=rows_of(9, 2))  # the rerun replaces it
    assert len(read_embeddings(out)[0]) == 5


def test_concurrent_writers_agree_on_one_sidecar(tmp_path):
    out, errors = tmp_path / "emb", []

    def write(shard: int) -> None:
        try:
            EmbeddingWriter(out, model="m").write_shard(shard, image_embeddings=unit_rows(3, 4, shard), metadata=rows_of(shard, 3))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert done_shards(out) == set(range(8)) and read_manifest(out)["dim"] == 4
    assert [p.name for p in out.iterdir() if p.is_file()] == ["altclip.json"]


def test_metadata_dicts_with_different_keys_keep_every_column(tmp_path):
    rows = [{"key": "a", "url": "http://x/1.jpg"}, {"key": "b", "caption": "un chat", "width": 3}]
    EmbeddingWriter(tmp_path / "e", model="m").write_shard(0, image_embeddings=unit_rows(2, 4, 0), metadata=rows)
    assert read_metadata(tmp_path / "e").to_pylist() == [
        {"key": "a", "url": "http://x/1.jpg", "caption": None, "width": None},
        {"key": "b", "url": None, "caption": "un chat", "width": 3},
    ]


def test_shards_with_different_json_fields_are_unified(tmp_path):
    writer = EmbeddingWriter(tmp_path / "e", model="m")
    writer.write_shard(0, image_embeddings=unit_rows(1, 4, 0), metadata=pa.table({"key": ["a"], "width": [3]}))
    writer.write_shard(1, image_embeddings=unit_rows(1, 4, 1), metadata=pa.table({"key": ["b"], "status": ["success"]}))
    assert read_metadata(tmp_path / "e").to_pylist() == [
        {"key": "a", "width": 3, "status": None}, {"key": "b", "width": None, "status": "success"},
    ]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({}, ValueError, "needs image_embeddings, text_embeddings or both"),
        ({"image_embeddings": unit_rows(3, 4, 0)}, ValueError, "row counts differ: image_embeddings 3, metadata 2"),
        ({"image_embeddings": unit_rows(2, 4, 0), "text_embeddings": unit_rows(3, 4, 0)}, ValueError,
         "row counts differ: image_embeddings 2, text_embeddings 3, metadata 2"),
        ({"image_embeddings": unit_rows(2, 4, 0), "text_embeddings": unit_rows(2, 6, 0)}, ValueError,
         "differ in dim: 4 and 6"),
        ({"image_embeddings": unit_rows(2, 4, 0) * 3}, ValueError, "not L2-normalised"),
        ({"image_embeddings": np.full((2, 4), np.nan)}, ValueError, "NaN"),
        ({"image_embeddings": np.ones(4)}, ValueError, r"2-d array \[rows, dim\]; got shape \(4,\)"),
        ({"image_embeddings": np.ones((2, 4), dtype=np.int64)}, ValueError, "must hold floats"),
        ({"image_embeddings": unit_rows(2, 4, 0), "metadata": "key"}, TypeError, "pyarrow.Table or a list of dicts"),
        ({"image_embeddings": unit_rows(2, 4, 0), "metadata": [{"k": 1}, 2]}, TypeError, "metadata row 1 is a int"),
    ],
)
def test_bad_shards_are_refused_with_the_reason(tmp_path, kwargs, error, message):
    kwargs.setdefault("metadata", rows_of(0, 2))
    with pytest.raises(error, match=message):
        EmbeddingWriter(tmp_path / "e", model="m").write_shard(0, **kwargs)
    assert done_shards(tmp_path / "e") == set()


@pytest.mark.parametrize("shard, error", [(-1, ValueError), (10**6, ValueError), (True, TypeError), ("3", TypeError)])
def test_bad_shard_ids(tmp_path, shard, error):
    with pytest.raises(error, match="shard_id"):
        EmbeddingWriter(tmp_path / "e", model="m").write_shard(shard, image_embeddings=unit_rows(1, 4, 0), metadata=rows_of(0, 1))


def test_the_folder_must_agree_with_its_sidecar(tmp_path):
    out = tmp_path / "e"
    EmbeddingWriter(out, model="BAAI/AltCLIP").write_shard(0, image_embeddings=unit_rows(2, 4, 0), metadata=rows_of(0, 2))
    with pytest.raises(ValueError, match=r"embeddings of another model \(BAAI/AltCLIP\), not BAAI/AltCLIP-m9"):
        EmbeddingWriter(out, model="BAAI/AltCLIP-m9")
    with pytest.raises(ValueError, match="holds float16 embeddings; this writer writes float32"):
        EmbeddingWriter(out, model="BAAI/AltCLIP", dtype="float32")
    writer = EmbeddingWriter(out, model="BAAI/AltCLIP")
    with pytest.raises(ValueError, match="holds 4-d embeddings; this shard's are 6-d"):
        writer.write_shard(1, image_embeddings=unit_rows(2, 6, 0), metadata=rows_of(1, 2))
    with pytest.raises(ValueError, match="image embeddings in every shard; this shard has image and text"):
        writer.write_shard(1, image_embeddings=unit_rows(2, 4, 0), text_embeddings=unit_rows(2, 4, 1), metadata=rows_of(1, 2))
    with pytest.raises(ValueError, match="dtype must be one of float16, float32"):
        EmbeddingWriter(out, model="BAAI/AltCLIP", dtype="bfloat16")
    assert done_shards(out) == {0}


def test_reading_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no altclip.json"):
        read_manifest(tmp_path)
    EmbeddingWriter(tmp_path / "e", model="m").write_shard(0, text_embeddings=unit_rows(2, 4, 0), metadata=rows_of(0, 2))
    with pytest.raises(FileNotFoundError, match="no image embeddings .* it holds text embeddings"):
        read_embeddings(tmp_path / "e", "image")
    with pytest.raises(ValueError, match="modality must be 'image' or 'text'"):
        read_embeddings(tmp_path / "e", "audio")
    manifest = json.loads((tmp_path / "e" / "altclip.json").read_text())
    (tmp_path / "e" / "altclip.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ValueError, match="format version 99"):
        read_manifest(tmp_path / "e")
    pq.write_table(pa.table({"key": ["a", "b", "c"]}), tmp_path / "e" / "metadata" / "metadata_000000.parquet")
    with pytest.raises(ValueError, match="has 2 rows but .*metadata_000000.parquet has 3"):
        read_embeddings(tmp_path / "e", "text")


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 4), min_size=1, max_size=6),
    dim=st.integers(1, 6),
    dtype=st.sampled_from(["float16", "float32"]),
    both=st.booleans(),
)
def test_any_shard_split_reads_back_in_order(tmp_path_factory, sizes, dim, dtype, both):
    out = tmp_path_factory.mktemp("prop") / "emb"
    writer = EmbeddingWriter(out, model="m", dtype=dtype)
    images, texts, keys = [], [], []
    for shard in reversed(range(len(sizes))):  # written last to first
        n = sizes[shard]
        image, text = unit_rows(n, dim, shard), unit_rows(n, dim, 50 + shard)
        writer.write_shard(shard, image_embeddings=image, text_embeddings=text if both else None,
                           metadata=[{"key": f"{shard}-{i}"} for i in range(n)])
        images.insert(0, image)
        texts.insert(0, text)
        keys[:0] = [f"{shard}-{i}" for i in range(n)]
    assert done_shards(out) == set(range(len(sizes)))
    if not keys:
        return
    tolerance = 1e-3 if dtype == "float16" else 1e-6
    for modality, expected in (("image", images), ("text", texts))[: 1 + both]:
        embeddings, metadata = read_embeddings(out, modality)
        np.testing.assert_allclose(embeddings, np.concatenate(expected), atol=tolerance)
        assert metadata.column("key").to_pylist() == keys


def test_keep_rows_copies_the_stored_values_bit_for_bit(tmp_path):
    from altclip_adapters.collection.store import delete_shard, keep_rows, shard_rows, shards

    out = tmp_path / "emb"
    writer = EmbeddingWriter(out, model="BAAI/AltCLIP", dtype="float16")
    writer.write_shard(3, image_embeddings=unit_rows(5, 8, 1), text_embeddings=unit_rows(5, 8, 2), metadata=rows_of(3, 5))
    stored = {m: np.load(out / d / f"{d}_000003.npy") for m, d in (("image", "img_emb"), ("text", "text_emb"))}
    before = shards(out)[0].fingerprint
    keep_rows(out, 3, [4, 0, 2])
    for m, d in (("image", "img_emb"), ("text", "text_emb")):
        kept = np.load(out / d / f"{d}_000003.npy")
        assert kept.dtype == np.float16 and kept.tobytes() == stored[m][[4, 0, 2]].tobytes()
    assert read_metadata(out).to_pylist() == [rows_of(3, 5)[i] for i in (4, 0, 2)]
    assert shard_rows(out, 3) == {"image": 3, "text": 3, "metadata": 3} and shards(out)[0].fingerprint != before
    with pytest.raises(IndexError, match="has 3 rows; row 7 asked for"):
        keep_rows(out, 3, [7])
    keep_rows(out, 3, [])  # no row left: an empty shard, as write_shard leaves one
    assert done_shards(out) == {3} and not list(out.rglob("*_000003.*")) and shard_rows(out, 3) == {"metadata": 0}
    delete_shard(out, 3)
    assert done_shards(out) == set()
    writer.write_shard(4, image_embeddings=unit_rows(0, 8, 1), text_embeddings=unit_rows(0, 8, 1), metadata=[])
    assert shard_rows(out, 4) == {"metadata": 0}
    delete_shard(out, 4)
    assert done_shards(out) == set()


def test_a_full_disk_raises_instead_of_publishing_a_truncated_npy(tmp_path):
    """np.save given a real file writes through a C FILE* whose failing flush it ignores; save_npy must raise."""
    import resource
    import signal

    from altclip_adapters.atomic import write_with
    from altclip_adapters.collection.files import save_npy

    path = tmp_path / "x.npy"
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(OSError, match="File too large"):
            write_with(path, save_npy(np.zeros((100, 100), np.float32)))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_write_and_read_an_embedding_file(tmp_path):
    from altclip_adapters.collection.files import read_embedding_file, write_embedding_file

    rows = unit_rows(3, 8, 0)
    for name in ("x.npy", "x.parquet"):
        write_embedding_file(tmp_path / name, ["a", "b", "c"], rows, {"model": "m", "modality": "image"})
        ids, embeddings, meta = read_embedding_file(tmp_path / name)
        assert ids == ["a", "b", "c"] and meta == {"model": "m", "modality": "image"}
        np.testing.assert_array_equal(embeddings, rows)
    with pytest.raises(ValueError, match="3 ids for 2 embedding rows"):
        write_embedding_file(tmp_path / "y.npy", ["a", "b", "c"], rows[:2], {})
    pq.write_table(pa.table({"a": [1]}), tmp_path / "plain.parquet")
    with pytest.raises(ValueError, match="not an index written by altclip embed"):
        read_embedding_file(tmp_path / "plain.parquet")
