"""AltCLIP on Ray Data, on one local Ray (``ray.init(num_cpus=2)`` once per session; every actor pool leaves a
CPU to Ray Data's read tasks, or the job would wait forever): embeddings equal ``Embedder``'s, unreadable
items land in the error column, ``altclip embed --ray`` writes the same folder as a local run, a killed
actor is replaced with every item embedded once, a truncated shard is reported. Selected by ``-m ray``."""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray

from altclip_adapters.cli import main
from altclip_adapters.inference.embedder import Embedder
from altclip_adapters.collection.ray import add_embeddings, run
from altclip_adapters.collection.shards import ShardSource
from altclip_adapters.collection.store import read_embeddings

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def reference(tiny_dir, shard_inputs):
    """The oracle: Embedder's embeddings of the image files and of the captions, in sample order."""
    embedder = Embedder.from_pretrained(tiny_dir, device="cpu", batch_size=3)
    return embedder.images(shard_inputs["files"]).numpy(), embedder.texts(shard_inputs["captions"]).numpy()


def by_name(rows, column="path"):
    return {Path(row[column]).name: row for row in rows}


def test_read_images_arrays(local_ray, tiny_dir, shard_inputs, reference):
    ds = ray.data.read_images(str(shard_inputs["root"] / "images"), include_paths=True, mode="RGB")
    rows = by_name(add_embeddings(ds, model=str(tiny_dir), batch_size=3).take_all())
    for path, expected in zip(shard_inputs["files"], reference[0]):
        assert rows[path.name]["error"] == ""
        np.testing.assert_allclose(rows[path.name]["embedding"], expected, atol=1e-5)


@pytest.mark.parametrize("column", ["bytes", "path"])
def test_read_binary_files_bytes_or_paths_with_an_unreadable_file(
    local_ray, tiny_dir, shard_inputs, reference, tmp_path, column
):
    folder = tmp_path / "images"
    folder.mkdir()
    for path in shard_inputs["files"]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "zz-broken.jpg").write_bytes(b"not a jpeg")
    ds = ray.data.read_binary_files(str(folder), include_paths=True)
    rows = by_name(add_embeddings(ds, model=str(tiny_dir), column=column, batch_size=4).take_all())
    for path, expected in zip(shard_inputs["files"], reference[0]):
        np.testing.assert_allclose(rows[path.name]["embedding"], expected, atol=1e-5)
    broken = rows["zz-broken.jpg"]
    assert "as an image" in broken["error"] and np.isnan(broken["embedding"]).all()


def test_read_parquet_img2dataset_bytes_column(local_ray, tiny_dir, shard_inputs, reference):
    ds = ray.data.read_parquet(str(shard_inputs["parquet"]))
    rows = {row["key"]: row for row in add_embeddings(ds, model=str(tiny_dir), column="jpg", batch_size=4).take_all()}
    for key, expected in zip(shard_inputs["keys"], reference[0]):
        np.testing.assert_allclose(rows[key]["embedding"], expected, atol=1e-5)
    assert rows["000000008"]["error"] and np.isnan(rows["000000008"]["embedding"]).all()  # the failed download


def test_read_webdataset_images_and_captions(local_ray, tiny_dir, shard_inputs, reference):
    """Two actor pools of half a CPU each, chained: image bytes and caption bytes of the same samples."""
    ds = ray.data.read_webdataset([str(t) for t in shard_inputs["tars"]], decoder=None)
    # the samples alternate .jpg and .png members: each row has bytes in one column, a null in the other
    ds = ds.map(
        lambda row: {
            "key": row["__key__"],
            "text": row["txt"],
            "image": next(row[ext] for ext in ("jpg", "png") if isinstance(row.get(ext), bytes)),
        }
    )
    ds = add_embeddings(
        ds, model=str(tiny_dir), batch_size=4, num_cpus=0.5, output_column="image_embedding", error_column="image_error"
    )
    ds = add_embeddings(
        ds,
        model=str(tiny_dir),
        modality="text",
        batch_size=4,
        num_cpus=0.5,
        output_column="text_embedding",
        error_column="text_error",
    )
    rows = {row["key"]: row for row in ds.take_all()}
    for i, key in enumerate(shard_inputs["keys"]):
        assert rows[key]["image_error"] == "" and rows[key]["text_error"] == ""
        np.testing.assert_allclose(rows[key]["image_embedding"], reference[0][i], atol=1e-5)
        np.testing.assert_allclose(rows[key]["text_embedding"], reference[1][i], atol=1e-5)


@pytest.mark.parametrize("inputs", ["folder", "tars", "parquet"])
def test_embed_ray_writes_what_a_local_run_writes(
    local_ray, tiny_dir, shard_inputs, reference, tmp_path, capsys, inputs
):
    root = shard_inputs["root"]
    paths = {
        "folder": [f"{root}/images", "--shard-size", "3"],
        "tars": [f"{root}/{{00000..00001}}.tar"],
        "parquet": [str(shard_inputs["parquet"])],
    }[inputs]
    out = tmp_path / "emb"
    assert (
        main(
            [
                "embed",
                *paths,
                "--out",
                str(out),
                "--model",
                str(tiny_dir),
                "--store-dtype",
                "float32",
                "--quiet",
                "--ray",
            ]
        )
        == 0
    )
    images, metadata = read_embeddings(out)
    np.testing.assert_allclose(images, reference[0], atol=1e-5)
    if inputs != "folder":
        np.testing.assert_allclose(read_embeddings(out, "text")[0], reference[1], atol=1e-5)
        assert metadata.column("key").to_pylist() == shard_inputs["keys"]
    shards = {"folder": 3, "tars": 2, "parquet": 1}[inputs]
    assert f"embedding rows in {shards} shard" in capsys.readouterr().out


def test_embed_ray_reports_a_truncated_shard_and_finishes_the_rest(local_ray, tiny_dir, shard_inputs, tmp_path, capsys):
    shards = tmp_path / "shards"
    shards.mkdir()
    data = shard_inputs["tars"][0].read_bytes()
    (shards / "00000.tar").write_bytes(data[: data.index(f"{shard_inputs['keys'][2]}.".encode()) + 700])
    (shards / "00001.tar").write_bytes(shard_inputs["tars"][1].read_bytes())
    out = tmp_path / "emb"
    assert (
        main(
            ["embed", f"{shards}/{{00000..00001}}.tar", "--out", str(out), "--model", str(tiny_dir), "--quiet", "--ray"]
        )
        == 1  # a shard read only partly: not done until its input is replaced
    )
    captured = capsys.readouterr()
    assert (
        f"{shards}/00000.tar: truncated or corrupt after 2 samples (last complete: {shard_inputs['keys'][1]})"
        in captured.err
    )
    assert "wrote 6 image and text embedding rows in 2 shards" in captured.out
    keys = shard_inputs["keys"]
    assert read_embeddings(out)[1].column("key").to_pylist() == keys[:2] + keys[4:]


def test_embed_ray_updates_a_folder_as_a_local_run_does(local_ray, tiny_dir, shard_inputs, tmp_path, capsys):
    photos, out, scratch = tmp_path / "photos", tmp_path / "emb", tmp_path / "scratch"
    photos.mkdir()
    files = shard_inputs["files"]
    for path in files[:5]:
        (photos / path.name).write_bytes(path.read_bytes())
    argv = ["--model", str(tiny_dir), "--store-dtype", "float32", "--quiet", "--shard-size", "2"]
    assert main(["embed", str(photos), "--out", str(out), *argv, "--ray"]) == 0
    (photos / files[5].name).write_bytes(files[5].read_bytes())  # new
    (photos / files[0].name).unlink()  # removed
    assert main(["embed", str(photos), "--out", str(out), *argv, "--ray"]) == 0
    captured = capsys.readouterr()
    assert "1 new, 0 changed, 1 removed, 4 unchanged images" in captured.err
    assert "wrote 1 image embedding row in 1 shard" in captured.out
    assert main(["embed", str(photos), "--out", str(scratch), *argv]) == 0
    ours, theirs = read_embeddings(out), read_embeddings(scratch)
    order = {p: i for i, p in enumerate(theirs[1].column("image_path").to_pylist())}
    rows = [order[p] for p in ours[1].column("image_path").to_pylist()]
    assert sorted(rows) == list(range(5))
    np.testing.assert_allclose(ours[0], theirs[0][rows], atol=1e-5)


def _readers_of(path: Path) -> list[int]:
    """The processes other than this one holding ``path`` open (Linux /proc)."""
    pids = []
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            if os.readlink(fd) == str(path) and int(fd.parts[2]) != os.getpid():
                pids.append(int(fd.parts[2]))
        except OSError:
            continue
    return pids


def _open_writer(fifo: Path, deadline: float, old_readers: tuple[int, ...] = ()) -> tuple[int, list[int]]:
    """(the write end of ``fifo``, the readers) once a process other than ``old_readers`` opens it for reading
    (polled, never past ``deadline``). A killed reader's end of the pipe can outlive it by a moment: an open that
    succeeds without a new reader in sight is closed and tried again."""
    while time.monotonic() < deadline:
        try:
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
            time.sleep(0.05)
            continue
        seen = time.monotonic() + 2
        while time.monotonic() < seen:
            if readers := [pid for pid in _readers_of(fifo) if pid not in old_readers]:
                return writer, readers
            time.sleep(0.05)
        os.close(writer)
    raise TimeoutError(f"no process opened {fifo} for reading")


def test_a_killed_actor_is_replaced_and_every_item_is_embedded_once(
    local_ray, tiny_dir, shard_inputs, reference, tmp_path
):
    """Shard 1 is a named pipe: the actor reading it blocks there, mid-shard, until the test writes the tar.
    The test kills that actor's process (SIGKILL) while it waits, then serves the tar to whichever process
    opens the pipe next: Ray restarts the actor and reruns the shard."""
    fifo = tmp_path / "00001.tar"
    os.mkfifo(fifo)
    killed, errors = [], []

    def kill_then_serve() -> None:
        deadline = time.monotonic() + 300  # generous: an actor restart on a loaded 2-core machine takes a while
        try:
            writer, pids = _open_writer(fifo, deadline)
            killed.extend(pids)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            os.close(writer)
            writer, _ = _open_writer(
                fifo, deadline, old_readers=tuple(pids)
            )  # the restarted actor, rerunning the shard
            os.set_blocking(writer, True)
            with os.fdopen(writer, "wb") as pipe:
                pipe.write(shard_inputs["tars"][1].read_bytes())
        except Exception as e:  # reported by the test, not lost in the thread
            errors.append(e)

    context = ray.data.DataContext.get_current()
    # bounds the run if the rerun never comes (Ray Data fails after this long without progress)
    timeout = getattr(context, "execution_no_progress_timeout_s", None)
    context.execution_no_progress_timeout_s = 300
    thread = threading.Thread(target=kill_then_serve, daemon=True)
    thread.start()
    try:
        sources = [ShardSource(0, "tar", str(shard_inputs["tars"][0])), ShardSource(1, "tar", str(fifo))]
        try:
            reports = run(
                sources,
                tmp_path / "emb",
                model=str(tiny_dir),
                modalities=("image", "text"),
                dtype="float32",
            )
        except Exception as e:
            raise AssertionError(f"the run failed; the killing thread saw: {errors}") from e
    finally:
        context.execution_no_progress_timeout_s = timeout
        thread.join(timeout=10)
    assert not errors and len(killed) == 1
    assert sorted(r.shard_id for r in reports) == [0, 1] and all(r.error is None for r in reports)
    assert {r.shard_id: r.worker.split(":")[-1] for r in reports}[1] != str(killed[0])
    images, metadata = read_embeddings(tmp_path / "emb")
    assert metadata.column("key").to_pylist() == shard_inputs["keys"]  # each item once, in order
    np.testing.assert_allclose(images, reference[0], atol=1e-5)
    np.testing.assert_allclose(read_embeddings(tmp_path / "emb", "text")[0], reference[1], atol=1e-5)
