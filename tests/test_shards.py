"""Shard inputs (webdataset tars, img2dataset parquet, chunks of files and lines) and ``altclip embed --out DIR``
(clip-retrieval's layout, incremental and resumable), in one process. The same runs on Ray: tests/test_ray.py."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_tar

from altclip_adapters.cli import main
from altclip_adapters.inference.embedder import Embedder
from altclip_adapters.collection.shards import ShardSource, plan, read_parquet, read_tar
from altclip_adapters.collection.store import read_embeddings, read_manifest


@pytest.fixture(scope="module")
def reference(tiny_dir, shard_inputs):
    """The oracle: Embedder's embeddings of the image files and the captions, in sample order."""
    embedder = Embedder.from_pretrained(tiny_dir, device="cpu", batch_size=3)
    return embedder.images(shard_inputs["files"]).numpy(), embedder.texts(shard_inputs["captions"]).numpy()


def embed(*args: str) -> int:
    return main(["embed", *map(str, args), "--quiet", "--device", "cpu"])


# reading shards ---------------------------------------------------------------------------------------
def test_plan_expands_brace_ranges_in_order(shard_inputs):
    root = shard_inputs["root"]
    sources = plan([f"{root}/{{00000..00001}}.tar"])
    assert [(s.shard_id, s.kind, s.path) for s in sources] == [(0, "tar", str(t)) for t in shard_inputs["tars"][:1]] + [
        (1, "tar", str(shard_inputs["tars"][1]))
    ]


def test_plan_chunks_files_and_lines(shard_inputs, tmp_path):
    sources = plan([shard_inputs["root"] / "images"], shard_size=3)
    assert [len(s.items) for s in sources] == [3, 3, 2]
    assert [p for s in sources for p in s.items] == list(map(str, shard_inputs["files"]))
    lines = tmp_path / "lines.txt"
    lines.write_text("one\n\ntwo\nthree\n", encoding="utf-8")
    assert [s.items for s in plan([lines], shard_size=2)] == [("one", "two"), ("three",)]


@pytest.mark.parametrize(
    "paths, message",
    [
        (["{root}/00000.tar", "{root}/00000.parquet"], "alone"),
        (["{root}/00000.tar", "{root}/images"], "alone"),
        (["{root}/{{00000..00005}}.tar"], "no such file"),
    ],
)
def test_plan_refuses_mixed_or_missing_inputs(shard_inputs, paths, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        plan([p.format(root=shard_inputs["root"]) for p in paths])


def test_read_tar_gives_image_caption_and_json_fields(shard_inputs):
    shard = read_tar(str(shard_inputs["tars"][0]))
    assert shard.error is None and shard.skipped == []
    assert [s.key for s in shard.samples] == shard_inputs["keys"][:4]
    assert [s.caption for s in shard.samples] == shard_inputs["captions"][:4]
    assert [s.image for s in shard.samples] == [f.read_bytes() for f in shard_inputs["files"][:4]]
    assert shard.samples[1].metadata == {
        "image_path": "000000001",
        "caption": "一张照片",
        "key": "000000001",
        "url": "https://example.com/1.jpg",
        "width": 40,
    }


@pytest.mark.parametrize("cut", ["mid-member", "block boundary"])
def test_read_tar_reports_where_a_truncated_shard_breaks(shard_inputs, tmp_path, cut):
    data = shard_inputs["tars"][1].read_bytes()
    # the third sample's image member: its header is at a 512-byte boundary, its data follows
    offset = data.index(f"{shard_inputs['keys'][6]}.".encode())
    end = offset + 512 + 100 if cut == "mid-member" else offset
    truncated = tmp_path / "cut.tar"
    truncated.write_bytes(data[:end])
    shard = read_tar(str(truncated))
    # cut inside a member, the samples before that member are complete; cut between members, the last
    # sample read may be missing members, so it is dropped too
    kept = 2 if cut == "mid-member" else 1
    assert [s.key for s in shard.samples] == shard_inputs["keys"][4 : 4 + kept]
    assert shard.error.startswith(
        f"{truncated}: truncated or corrupt after {kept} samples (last complete: {shard_inputs['keys'][3 + kept]}): "
    )
    assert shard.error.endswith("; the rest of this shard is skipped")


def test_read_tar_names_a_bad_sample_and_keeps_the_rest(tmp_path):
    path = write_tar(
        tmp_path / "bad.tar",
        [
            {"__key__": "a", "jpg": b"x", "txt": b"\xff\xfe", "json": b"{}"},
            {"__key__": "b", "jpg": b"y", "txt": b"fine", "json": b"[1]"},
            {"__key__": "c", "jpg": b"z", "txt": b"ok"},
        ],
    )
    shard = read_tar(str(path))
    assert [s.key for s in shard.samples] == ["a", "c"]  # a caption that is not UTF-8 is decoded with U+FFFD
    assert shard.samples[0].caption == "\ufffd\ufffd"
    assert shard.notes == [f"{path}:a: the caption (.txt) is not UTF-8 (byte 0xff at offset 0): bad bytes replaced by U+FFFD"]
    assert len(shard.skipped) == 1
    assert shard.skipped[0].startswith(f"{path}:b: the .json member holds a list")


def test_read_parquet_reads_img2dataset_output(shard_inputs):
    shard = read_parquet(str(shard_inputs["parquet"]))
    assert shard.missing_images == 1
    assert [s.key for s in shard.samples] == shard_inputs["keys"]
    assert [s.caption for s in shard.samples] == shard_inputs["captions"]
    assert shard.samples[0].image == shard_inputs["files"][0].read_bytes()
    assert shard.samples[0].metadata == {
        "image_path": "000000000",
        "caption": "a red photo",
        "url": "https://example.com/0.jpg",
        "key": "000000000",
        "status": "success",
        "error_message": None,
    }


def test_read_parquet_refuses_img2dataset_metadata_only_files(tmp_path):
    path = tmp_path / "00000.parquet"
    pq.write_table(pa.table({"key": ["0"], "url": ["https://example.com/0.jpg"], "status": ["success"]}), path)
    with pytest.raises(ValueError, match="no image column .* give the .tar files instead"):
        read_parquet(str(path))


def test_shard_fingerprint_changes_with_its_items():
    one = ShardSource(0, "images", None, ("a.jpg", "b.jpg"))
    assert one.fingerprint() == ShardSource(0, "images", None, ("a.jpg", "b.jpg")).fingerprint()
    assert one.fingerprint() != ShardSource(0, "images", None, ("a.jpg", "c.jpg")).fingerprint()


def test_an_item_is_its_path_size_and_modification_time(shard_inputs, tmp_path):
    from altclip_adapters.collection.shards import collect

    tar = tmp_path / "a.tar"
    tar.write_bytes(shard_inputs["tars"][0].read_bytes())
    before = collect([str(tar)])
    assert before.keys == (str(tar.resolve()),) and before.tokens[0].startswith(f"{tar.stat().st_size}:")
    tar.write_bytes(tar.read_bytes()[:-1024])  # cut short (as a download that stopped)
    assert collect([str(tar)]).tokens != before.tokens
    lines = tmp_path / "lines.txt"
    lines.write_text("a\nb\na\n", encoding="utf-8")
    assert collect([str(lines)]).keys == ("a", "b", "a\x001")  # a repeated line is one item per repeat


# altclip embed --out DIR ------------------------------------------------------------------------------
def test_embed_folder_writes_the_layout_and_resumes_by_shard(tiny_dir, shard_inputs, reference, tmp_path, capsys):
    out = tmp_path / "emb"
    argv = (shard_inputs["root"] / "images", "--out", out, "--model", tiny_dir, "--shard-size", "3", "--store-dtype", "float32")
    assert embed(*argv) == 0
    assert sorted(p.name for p in (out / "img_emb").iterdir()) == [f"img_emb_00000{i}.npy" for i in range(3)]
    assert sorted(p.name for p in (out / "metadata").iterdir()) == [f"metadata_00000{i}.parquet" for i in range(3)]
    assert not (out / "text_emb").exists()
    assert read_manifest(out)["modalities"] == ["image"]
    embeddings, metadata = read_embeddings(out)
    np.testing.assert_allclose(embeddings, reference[0], atol=1e-5)
    assert metadata.column("image_path").to_pylist() == list(map(str, shard_inputs["files"]))
    assert capsys.readouterr().out.strip() == f"wrote 8 image embedding rows in 3 shards to {out}"

    kept = {p: p.stat().st_mtime_ns for p in (out / "img_emb").iterdir() if not p.name.endswith("1.npy")}
    (out / "img_emb" / "img_emb_000001.npy").unlink()
    (out / "metadata" / "metadata_000001.parquet").unlink()
    assert embed(*argv) == 0
    captured = capsys.readouterr()
    assert "altclip: shard 1's files do not match its record (a run stopped while changing it); the shard is redone" in captured.err
    assert f"altclip: 0 new, 0 changed, 0 removed, 8 unchanged images (2 shards of {out} kept as they are)" in captured.err
    assert captured.out.strip() == f"wrote 3 image embedding rows in 1 shard to {out}"
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # the shards already done were not rewritten
    np.testing.assert_allclose(read_embeddings(out)[0], reference[0], atol=1e-5)

    assert embed(*argv) == 0
    assert capsys.readouterr().out.strip() == f"nothing to do: all 3 shards are already in {out}"


def test_embed_folder_over_other_inputs_updates_it(tiny_dir, shard_inputs, tmp_path, capsys):
    out = tmp_path / "emb"
    assert embed(*shard_inputs["files"][:2], "--out", out, "--model", tiny_dir) == 0
    assert embed(*shard_inputs["files"][1:4], "--out", out, "--model", tiny_dir) == 0
    assert "altclip: 2 new, 0 changed, 1 removed, 1 unchanged images" in capsys.readouterr().err
    assert read_embeddings(out)[1].column("image_path").to_pylist() == list(map(str, shard_inputs["files"][1:4]))


def test_embed_tars_gives_image_and_caption_rows_in_one_pass(tiny_dir, shard_inputs, reference, tmp_path, capsys):
    out = tmp_path / "emb"
    root = shard_inputs["root"]
    assert embed(f"{root}/{{00000..00001}}.tar", "--out", out, "--model", tiny_dir, "--store-dtype", "float32") == 0
    assert read_manifest(out)["modalities"] == ["image", "text"]
    images, metadata = read_embeddings(out, "image")
    texts, _ = read_embeddings(out, "text")
    np.testing.assert_allclose(images, reference[0], atol=1e-5)
    np.testing.assert_allclose(texts, reference[1], atol=1e-5)
    assert metadata.column("key").to_pylist() == shard_inputs["keys"]
    assert metadata.column("caption").to_pylist() == shard_inputs["captions"]
    assert metadata.column("url").to_pylist()[0] == "https://example.com/0.jpg"
    assert capsys.readouterr().out.strip() == f"wrote 8 image and text embedding rows in 2 shards to {out}"


def test_embed_parquet_leaves_failed_downloads_out(tiny_dir, shard_inputs, reference, tmp_path, capsys):
    out = tmp_path / "emb"
    assert embed(shard_inputs["parquet"], "--out", out, "--model", tiny_dir, "--modality", "image") == 0
    images, metadata = read_embeddings(out)
    assert images.dtype == np.float32 and np.load(out / "img_emb" / "img_emb_000000.npy").dtype == np.float16
    np.testing.assert_allclose(images, reference[0], atol=2e-3)  # float16 storage
    assert metadata.column("status").to_pylist() == ["success"] * 8
    assert not (out / "text_emb").exists()
    assert "1 row without an image (failed downloads) left out" in capsys.readouterr().out


def test_embed_tars_reports_a_truncated_shard_and_finishes_the_rest(tiny_dir, shard_inputs, tmp_path, capsys):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "00000.tar").write_bytes(shard_inputs["tars"][0].read_bytes())
    data = shard_inputs["tars"][1].read_bytes()
    (shards / "00001.tar").write_bytes(data[: data.index(f"{shard_inputs['keys'][6]}.".encode()) + 600])
    bad = write_tar(
        shards / "00002.tar",
        [
            {"__key__": "broken", "jpg": b"not an image", "txt": b"caption"},
            {"__key__": "nocaption", "png": shard_inputs["files"][1].read_bytes()},
        ],
    )
    out = tmp_path / "emb"
    assert embed(f"{shards}/{{00000..00002}}.tar", "--out", out, "--model", tiny_dir) == 1  # not whole: not done
    captured = capsys.readouterr()
    assert (
        f"altclip: {shards}/00001.tar: truncated or corrupt after 2 samples (last complete: {shard_inputs['keys'][5]})"
        in captured.err
    )
    assert f"altclip: skipped: {bad}:broken: cannot read" in captured.err
    assert f"altclip: skipped: {bad}:nocaption: no caption" in captured.err
    assert captured.out.strip() == (
        f"wrote 6 image and text embedding rows in 3 shards to {out}; 2 unreadable or incomplete samples skipped "
        "(listed above); 1 truncated shard (listed above) written up to the break"
    )
    assert read_embeddings(out)[1].column("key").to_pylist() == shard_inputs["keys"][:6]
    assert captured.err.strip().splitlines()[-1] == (
        f"altclip: error: 1 shard read only partly (truncated input: {shards}/00001.tar); replace the file and rerun: "
        "the rerun redoes it"
    )

    # the same truncated file again: nothing to redo, still not done
    assert embed(f"{shards}/{{00000..00002}}.tar", "--out", out, "--model", tiny_dir) == 1
    captured = capsys.readouterr()
    assert captured.out.strip() == f"nothing to do: all 3 shards are already in {out}"
    assert "1 shard read only partly" in captured.err
    # re-downloaded (its size and modification time change): that shard alone is redone, whole
    (shards / "00001.tar").write_bytes(data)
    assert embed(f"{shards}/{{00000..00002}}.tar", "--out", out, "--model", tiny_dir) == 0
    captured = capsys.readouterr()
    assert "altclip: 0 new, 1 changed, 0 removed, 2 unchanged tar files" in captured.err
    assert captured.out.strip() == f"wrote 4 image and text embedding rows in 1 shard to {out}"
    assert sorted(read_embeddings(out)[1].column("key").to_pylist()) == shard_inputs["keys"]


def test_embed_texts_into_a_folder(tiny_dir, shard_inputs, reference, tmp_path):
    lines = tmp_path / "captions.txt"
    lines.write_text("\n".join(shard_inputs["captions"]) + "\n", encoding="utf-8")
    out = tmp_path / "emb"
    assert embed(lines, "--out", out, "--model", tiny_dir, "--store-dtype", "float32", "--shard-size", "5") == 0
    texts, metadata = read_embeddings(out, "text")
    np.testing.assert_allclose(texts, reference[1], atol=1e-5)
    assert metadata.column("caption").to_pylist() == shard_inputs["captions"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["{root}/00000.tar", "--out", "{tmp}/one.npy"], "embedded into a folder: give --out DIR"),
        (["{root}/images", "--out", "{tmp}/one.npy", "--ray"], "--ray writes an embedding folder"),
        (["{root}/images", "--out", "{tmp}/emb", "--modality", "text"], "image files give image embeddings only"),
        (["{root}/images", "--out", "{tmp}/emb.npz"], "must end in .npy or .parquet, or name a folder"),
    ],
)
def test_embed_folder_bad_requests_are_one_line(tiny_dir, shard_inputs, tmp_path, capsys, args, message):
    args = [a.format(root=shard_inputs["root"], tmp=tmp_path) for a in args]
    assert main(["embed", *args, "--model", str(tiny_dir), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_ray_address_swallowing_a_path_is_caught(tiny_dir, shard_inputs, tmp_path, capsys):
    images = str(shard_inputs["root"] / "images")
    assert main(["embed", "--out", str(tmp_path / "emb"), "--ray", images, images, "--model", str(tiny_dir)]) == 1
    assert "--ray took" in capsys.readouterr().err


def test_a_shard_that_cannot_be_read_is_reported_and_retried_by_a_rerun(tiny_dir, shard_inputs, tmp_path, capsys):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "00000.parquet").write_bytes(shard_inputs["parquet"].read_bytes())
    pq.write_table(pa.table({"key": ["0"], "url": ["https://example.com/0.jpg"]}), shards / "00001.parquet")
    out = tmp_path / "emb"
    assert embed(f"{shards}/{{00000..00001}}.parquet", "--out", out, "--model", tiny_dir) == 1
    captured = capsys.readouterr()
    assert f"altclip: {shards}/00001.parquet: not written: {shards}/00001.parquet has no image column" in captured.err
    assert (
        "altclip: error: 1 of 2 shards could not be read (listed above); rerun the same command to retry them"
        in captured.err
    )
    assert captured.out.startswith(f"wrote 8 image and text embedding rows in 1 shard to {out}")
    pq.write_table(pq.read_table(shard_inputs["parquet"]), shards / "00001.parquet")  # repaired
    assert embed(f"{shards}/{{00000..00001}}.parquet", "--out", out, "--model", tiny_dir) == 0
    assert "altclip: 1 new, 0 changed, 0 removed, 1 unchanged parquet files" in capsys.readouterr().err
    assert len(read_embeddings(out)[0]) == 16


def test_embed_folder_names_an_unreadable_image_file_once(tiny_dir, shard_inputs, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(shard_inputs["files"][1].read_bytes())
    (folder / "b.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "emb"
    assert embed(folder, "--out", out, "--model", tiny_dir) == 0
    captured = capsys.readouterr()
    skipped = [line for line in captured.err.splitlines() if line.startswith("altclip: skipped: ")]
    assert len(skipped) == 1 and "b.jpg" in skipped[0] and "shard" not in skipped[0]
    assert captured.out.strip() == (
        f"wrote 1 image embedding row in 1 shard to {out}; 1 unreadable or incomplete sample skipped (listed above)"
    )
