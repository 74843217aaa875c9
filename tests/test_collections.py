"""Collections that change: ``altclip embed`` reruns embed only what is new or changed and drop what is gone
(image folders, text files, tars; folders and single files alike), equal to a run from scratch; the faults a
run meets (a damaged state file, a full disk, a second writer, Ctrl-C or SIGTERM mid-shard) lose nothing."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import slow_photos, make_images, stop_mid_run, write_tar

from altclip_adapters.cli import main
from altclip_adapters.collection.store import lock, read_embeddings, shards

ROOT = Path(__file__).parents[1]


def embed(*args) -> int:
    return main(["embed", *map(str, args), "--quiet", "--device", "cpu"])


def vectors(folder: Path, column: str = "image_path", modality: str = "image") -> dict[str, np.ndarray]:
    """{metadata value: embedding} of a folder (values must be unique)."""
    embeddings, metadata = read_embeddings(folder, modality)
    names = metadata.column(column).to_pylist()
    assert len(set(names)) == len(names)
    return dict(zip(names, embeddings))


def assert_same_collection(folder: Path, scratch: Path, column: str = "image_path", modality: str = "image") -> None:
    ours, theirs = vectors(folder, column, modality), vectors(scratch, column, modality)
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        np.testing.assert_allclose(ours[name], theirs[name], atol=1e-5)


def touch_later(path: Path) -> None:
    """Give ``path`` a modification time one second later (a rewrite on a coarse-clock file system may keep it)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


# incremental updates ----------------------------------------------------------------------------------------
def test_an_image_folder_update_embeds_only_what_changed(tiny_dir, tmp_path, capsys):
    photos, out = tmp_path / "photos", tmp_path / "emb"
    photos.mkdir()
    images = make_images(10, seed=11)
    for i in range(7):
        images[i].save(photos / f"{i:02d}.png")
    argv = (photos, "--out", out, "--model", tiny_dir, "--shard-size", "4", "--store-dtype", "float32")
    assert embed(*argv) == 0
    assert "time per stage: read " in capsys.readouterr().err
    record = json.loads((out / "altclip_run" / "shards" / "000000.json").read_text())
    assert set(record["report"]["timings"]) == {"read", "decode", "embed", "write"}
    assert record["report"]["timings"]["embed"] > 0
    untouched = {s.shard_id: s.fingerprint for s in shards(out)}

    images[7].save(photos / "07.png")  # new
    images[8].save(photos / "08.png")  # new
    images[9].save(photos / "05.png")  # changed (shard 1)
    touch_later(photos / "05.png")
    (photos / "06.png").unlink()  # removed (shard 1)
    assert embed(*argv) == 0
    captured = capsys.readouterr()
    assert "altclip: 2 new, 1 changed, 1 removed, 5 unchanged images (1 shard of" in captured.err
    assert captured.out.strip() == f"wrote 3 image embedding rows in 1 shard to {out}"
    after = {s.shard_id: s.fingerprint for s in shards(out)}
    assert sorted(after) == [0, 1, 2] and after[0] == untouched[0] and after[1] != untouched[1]
    assert len(np.load(out / "img_emb" / "img_emb_000001.npy")) == 1  # 04.png kept, not re-embedded

    scratch = tmp_path / "scratch"
    assert embed(photos, "--out", scratch, "--model", tiny_dir, "--store-dtype", "float32") == 0
    assert_same_collection(out, scratch)

    from embedding_reader import EmbeddingReader  # the layout stays readable after the update

    reader = EmbeddingReader(str(out / "img_emb"), file_format="parquet_npy", metadata_folder=str(out / "metadata"),
                             meta_columns=["image_path"])
    assert reader.count == 8
    embeddings, meta = zip(*reader(batch_size=3, show_progress=False))
    paths = [p for m in meta for p in m["image_path"]]
    ours = vectors(out)
    np.testing.assert_allclose(np.concatenate(embeddings), np.stack([ours[p] for p in paths]), atol=1e-6)

    capsys.readouterr()
    assert embed(*argv) == 0
    assert capsys.readouterr().out.strip() == f"nothing to do: all 3 shards are already in {out}"
    for path in photos.iterdir():
        path.unlink()
    images[0].save(photos / "00.png")  # 00.png rewritten with the same pixels: same size, later mtime
    touch_later(photos / "00.png")
    assert embed(*argv) == 0
    assert "0 new, 1 changed, 7 removed, 0 unchanged images" in capsys.readouterr().err
    assert list(vectors(out)) == [str(photos / "00.png")] and sorted(s.shard_id for s in shards(out)) == [0]


def test_a_shard_left_with_only_unreadable_items_stays_empty(tiny_dir, tmp_path, capsys):
    photos, out = tmp_path / "photos", tmp_path / "emb"
    photos.mkdir()
    make_images(1, seed=4)[0].save(photos / "a.png")
    (photos / "b.png").write_bytes(b"not a picture")
    argv = (photos, "--out", out, "--model", tiny_dir, "--shard-size", "2")
    assert embed(*argv) == 0
    (photos / "a.png").unlink()
    assert embed(*argv) == 0
    assert "0 new, 0 changed, 1 removed, 1 unchanged images" in capsys.readouterr().err
    assert embed(*argv) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f"nothing to do: its one shard is already in {out}" and "redone" not in captured.err


def test_many_small_updates_are_compacted(tiny_dir, tmp_path, capsys):
    photos, out, scratch = tmp_path / "photos", tmp_path / "emb", tmp_path / "scratch"
    photos.mkdir()
    argv = (photos, "--out", out, "--model", tiny_dir, "--shard-size", "4", "--store-dtype", "float32")
    for i, image in enumerate(make_images(10, seed=6)):  # one picture a run: one small shard each
        image.save(photos / f"{i:02d}.png")
        assert embed(*argv) == 0
    err = capsys.readouterr().err
    assert "altclip: compacting 4 small shards into shard 8" in err and "compacting 4 small shards into shard 9" in err
    assert sorted(s.shard_id for s in shards(out)) == [8, 9, 10, 11]  # 0-7 merged (4 items each), then 10 and 11 new
    assert [s.rows for s in shards(out)] == [4, 4, 1, 1]
    record = json.loads((out / "altclip_run" / "shards" / "000008.json").read_text())
    assert record["keys"] == [str((photos / f"{i:02d}.png").resolve()) for i in range(4)] and record["rows"] == 4
    assert embed(photos, "--out", scratch, "--model", tiny_dir, "--store-dtype", "float32") == 0
    assert_same_collection(out, scratch)
    capsys.readouterr()
    assert embed(*argv) == 0
    assert capsys.readouterr().out.strip() == f"nothing to do: all 4 shards are already in {out}"


def test_a_stop_between_a_merge_and_its_deletions_leaves_no_row_twice(tiny_dir, tmp_path, capsys):
    photos, out, scratch = tmp_path / "photos", tmp_path / "emb", tmp_path / "scratch"
    photos.mkdir()
    argv = (photos, "--out", out, "--model", tiny_dir, "--shard-size", "4", "--store-dtype", "float32")
    for i, image in enumerate(make_images(9, seed=8)):
        if i == 8:
            shutil.copytree(out, tmp_path / "before")
        image.save(photos / f"{i:02d}.png")
        assert embed(*argv) == 0
    # as if the run had stopped after recording merged shard 8, before deleting shard 0
    for path in (tmp_path / "before").rglob("*000000.*"):
        shutil.copy(path, out / path.relative_to(tmp_path / "before"))
    assert len(read_embeddings(out)[0]) == 10  # 00.png twice
    capsys.readouterr()
    assert embed(*argv) == 0
    assert "0 new, 0 changed, 0 removed, 9 unchanged images" in capsys.readouterr().err
    assert embed(photos, "--out", scratch, "--model", tiny_dir, "--store-dtype", "float32") == 0
    assert_same_collection(out, scratch)  # each picture once


def test_a_text_file_update_equals_a_run_from_scratch(tiny_dir, tmp_path, capsys):
    lines, out, scratch = tmp_path / "captions.txt", tmp_path / "emb", tmp_path / "scratch"
    lines.write_text("a cat\na dog\n一只猫\na cat\nein Hund\n", encoding="utf-8")
    argv = (lines, "--out", out, "--model", tiny_dir, "--shard-size", "2", "--store-dtype", "float32")
    assert embed(*argv) == 0
    lines.write_text("a dog\na cat\n\nein Hund\nun chien\n", encoding="utf-8")  # one "a cat" and 一只猫 gone
    assert embed(*argv) == 0
    assert "1 new, 0 changed, 2 removed, 3 unchanged text lines" in capsys.readouterr().err
    assert embed(lines, "--out", scratch, "--model", tiny_dir, "--store-dtype", "float32") == 0
    assert sorted(read_embeddings(out, "text")[1].column("caption").to_pylist()) == sorted(
        ["a dog", "a cat", "ein Hund", "un chien"]
    )
    assert_same_collection(out, scratch, "caption", "text")


def test_tars_added_and_removed(tiny_dir, shard_inputs, tmp_path, capsys):
    tars, out = tmp_path / "tars", tmp_path / "emb"
    tars.mkdir()
    for tar in shard_inputs["tars"]:
        shutil.copy(tar, tars / tar.name)
    assert embed(f"{tars}/{{00000..00001}}.tar", "--out", out, "--model", tiny_dir, "--store-dtype", "float32") == 0
    write_tar(tars / "00002.tar", [{"__key__": "new", "png": shard_inputs["files"][1].read_bytes(), "txt": b"new one"}])
    (tars / "00000.tar").unlink()
    assert embed(tars / "00001.tar", tars / "00002.tar", "--out", out, "--model", tiny_dir, "--store-dtype", "float32") == 0
    assert "1 new, 0 changed, 1 removed, 1 unchanged tar files" in capsys.readouterr().err
    assert sorted(s.shard_id for s in shards(out)) == [1, 2]  # shard 0 (the removed tar) deleted, the new one is 2
    keys = read_embeddings(out)[1].column("image_path").to_pylist()
    assert keys == shard_inputs["keys"][4:] + ["new"]


# single-file outputs: the same mechanism ------------------------------------------------------------------
def test_a_single_file_output_is_incremental_and_says_nothing_to_do(tiny_dir, tmp_path, capsys):
    photos, out = tmp_path / "photos", tmp_path / "index.parquet"
    photos.mkdir()
    images = make_images(4, seed=5)
    for i in range(3):
        images[i].save(photos / f"{i}.png")
    assert embed(photos, "--out", out, "--model", tiny_dir) == 0
    capsys.readouterr()
    before = out.stat().st_mtime_ns
    assert embed(photos, "--out", out, "--model", tiny_dir) == 0
    assert capsys.readouterr().out.strip() == f"nothing to do: {out} is up to date"
    assert out.stat().st_mtime_ns == before

    images[3].save(photos / "3.png")
    (photos / "0.png").unlink()
    assert embed(photos, "--out", out, "--model", tiny_dir) == 0
    assert "1 new, 0 changed, 1 removed, 2 unchanged images" in capsys.readouterr().err
    assert embed(photos, "--out", tmp_path / "scratch.parquet", "--model", tiny_dir) == 0
    ours, scratch = pq.read_table(out), pq.read_table(tmp_path / "scratch.parquet")
    assert ours.column("id").to_pylist() == scratch.column("id").to_pylist() == [str(photos / f"{i}.png") for i in (1, 2, 3)]
    np.testing.assert_allclose(np.stack(ours.column("embedding").to_numpy(zero_copy_only=False)),
                               np.stack(scratch.column("embedding").to_numpy(zero_copy_only=False)), atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "index.parquet", "photos", "scratch.parquet"]


def test_a_full_disk_never_leaves_a_truncated_file(tiny_dir, tmp_path, capsys):
    """The final write hits the file-size limit (EFBIG, as ENOSPC on a full disk): no OUT, no temporary file,
    and the state kept; the next run writes it."""
    photos, out = tmp_path / "photos", tmp_path / "index.npy"
    photos.mkdir()
    for i, image in enumerate(make_images(3, seed=2)):
        image.save(photos / f"{i}.png")
    assert embed(photos, "--out", out, "--model", tiny_dir) == 0
    expected = np.load(out)
    out.unlink()

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (256, 256))

    # no bytecode: under the limit CPython would write truncated .pyc files (a short write is not an error to it)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "altclip_adapters.cli", "embed", str(photos), "--out", str(out), "--model",
               str(tiny_dir), "--quiet", "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, preexec_fn=limit, env=env, check=False)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("altclip: error: [Errno 27] File too large")
    assert not out.exists() and not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".index.npy.*.tmp"))
    assert embed(photos, "--out", out, "--model", tiny_dir) == 0
    np.testing.assert_array_equal(np.load(out), expected)


def test_a_damaged_state_file_is_discarded_with_one_line(tiny_dir, shard_inputs, tmp_path, capsys):
    out, scratch = tmp_path / "emb", tmp_path / "scratch"
    argv = (shard_inputs["root"] / "images", "--model", tiny_dir, "--shard-size", "5", "--store-dtype", "float32")
    partial = out / "altclip_run" / "partial" / "000000.npz"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"PK\x03\x04 not a whole zip")  # saved batches cut short
    assert embed(*argv, "--out", out) == 0
    assert "saved batches unreadable" in capsys.readouterr().err and not partial.exists()
    (out / "altclip_run" / "shards" / "000001.json").write_text("")  # a record emptied (a kill during a write)
    assert embed(*argv, "--out", out) == 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "record" in line] == [
        "altclip: shard 1: its record cannot be read (a damaged file); the shard is redone"
    ]
    assert sorted(s.shard_id for s in shards(out)) == [0, 1]  # shard 1 deleted, its items embedded again
    assert embed(*argv, "--out", scratch) == 0
    assert_same_collection(out, scratch)


def test_a_second_writer_gets_one_line(tiny_dir, shard_inputs, tmp_path, capsys):
    out = tmp_path / "emb"
    out.mkdir()
    with lock(out):  # another process's open file description: flock excludes it as it would another process
        assert embed(shard_inputs["root"] / "images", "--out", out, "--model", tiny_dir) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"altclip: error: {out} is being written by another process (it holds {out / 'altclip.lock'}): wait for that run to end"
    ]
    assert not (out / "img_emb").exists()
    assert embed(shard_inputs["root"] / "images", "--out", tmp_path / "x.npy", "--model", tiny_dir) == 0
    with lock(tmp_path / ".x.npy.altclip"):
        assert embed(shard_inputs["root"] / "images", "--out", tmp_path / "x.npy", "--model", tiny_dir) == 1


def test_a_folder_of_other_inputs_is_refused_in_one_line(tiny_dir, shard_inputs, tmp_path, capsys):
    from altclip_adapters.collection.store import EmbeddingWriter

    out, lines = tmp_path / "emb", tmp_path / "captions.txt"
    lines.write_text("a cat\n", encoding="utf-8")
    assert embed(shard_inputs["root"] / "images", "--out", out, "--model", tiny_dir) == 0
    capsys.readouterr()
    assert embed(lines, "--out", out, "--model", tiny_dir) == 1
    assert capsys.readouterr().err == (
        f"altclip: error: {out} holds embeddings of images; these inputs are text lines: write to a new folder\n"
    )
    foreign = tmp_path / "foreign"  # shards written by another tool: no run records to update them by
    writer = EmbeddingWriter(foreign, model=str(tiny_dir.resolve()), dtype="float16")
    writer.write_shard(0, image_embeddings=np.eye(1, 16, dtype=np.float32), metadata=[{"image_path": "x.png"}])
    assert embed(shard_inputs["root"] / "images", "--out", foreign, "--model", tiny_dir) == 1
    assert "holds shards without altclip's run records" in capsys.readouterr().err
    assert len(read_embeddings(foreign)[0]) == 1  # untouched


# stopped mid-shard: nothing lost, bit for bit ------------------------------------------------------------
@pytest.mark.parametrize("sig, output", [(signal.SIGINT, "emb"), (signal.SIGTERM, "index.npy")])
def test_stopped_mid_shard_the_rerun_reuses_the_finished_batches_bit_for_bit(tiny_dir, tmp_path, sig, output):
    """One shard of 4 small images and 8 slow ones, 2 a batch: the signal comes once the bar passes 4 items, while
    at least 3 batches of slow images are left, whatever the machine's speed."""
    photos = slow_photos(tmp_path / "photos")
    out = tmp_path / output
    common = ["--model", str(tiny_dir), "--batch-size", "2", "--device", "cpu", "--store-dtype", "float16"]
    status, err = stop_mid_run([str(photos), "--out", str(out), *common], sig, 12)
    assert status == 130, err
    kept = re.search(r"altclip: interrupted: (\d+) of 12 items embedded are kept in .*; run the same command to resume",
                     err)
    assert kept and 4 <= int(kept.group(1)) < 12, err
    state = out if output == "emb" else tmp_path / ".index.npy.altclip"
    assert (state / "altclip_run" / "partial" / "000000.npz").is_file()
    assert not (out.exists() and output != "emb")

    assert main(["embed", str(photos), "--out", str(out), *common, "--quiet"]) == 0
    clean = tmp_path / ("clean" if output == "emb" else "clean.npy")
    assert main(["embed", str(photos), "--out", str(clean), *common, "--quiet"]) == 0
    record = json.loads((state / "altclip_run" / "shards" / "000000.json").read_text())
    assert record["report"]["resumed"] == int(kept.group(1))
    if output == "emb":
        name = "img_emb/img_emb_000000.npy"
        assert (out / name).read_bytes() == (clean / name).read_bytes()
        assert pq.read_table(out / "metadata" / "metadata_000000.parquet").equals(
            pq.read_table(clean / "metadata" / "metadata_000000.parquet"))
    else:
        assert np.load(out).tobytes() == np.load(clean).tobytes()
        assert json.loads(out.with_suffix(".ids.json").read_text())["ids"] == json.loads(
            clean.with_suffix(".ids.json").read_text())["ids"]
