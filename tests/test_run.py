"""``embed_folder``, the library's one call for an incremental folder run (what ``altclip embed --out DIR`` runs):
an update embeds only what changed and its vectors equal ``Embedder``'s; a process killed mid-run (SIGKILL) is
resumed by the call and ends with the bytes of an uninterrupted run; without a model, the folder's recorded one
is used; the CLI prints the warnings the call returns; SIGTERM is Ctrl-C only in the main thread and only for the
call; the Embedder is left as it is (stage timings come from its batches); Ray runs the same worker."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import slow_photos, make_images, stop_mid_run, write_images

from altclip_adapters import embed_folder
from altclip_adapters.cli import main
from altclip_adapters.collection.store import read_embeddings
from altclip_adapters.inference.embedder import Embedder


@pytest.fixture(scope="module")
def embedder(tiny_dir):
    return Embedder.from_pretrained(tiny_dir, device="cpu", batch_size=2)


def vectors(folder: Path) -> dict[str, np.ndarray]:
    """{image path: embedding} of an embedding folder."""
    embeddings, metadata = read_embeddings(folder)
    return dict(zip(metadata.column("image_path").to_pylist(), embeddings))


def assert_equals_embedder(folder: Path, embedder: Embedder, files: list[Path]) -> None:
    ours = vectors(folder)
    assert sorted(ours) == sorted(str(f) for f in files)
    expected = embedder.images(files).numpy()
    for path, row in zip(files, expected):
        np.testing.assert_allclose(ours[str(path)], row, atol=1e-5)


def test_an_update_embeds_only_what_changed_and_equals_the_embedder(tiny_dir, embedder, tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "emb"
    photos.mkdir()
    images = make_images(10, seed=4)
    for i in range(7):
        images[i].save(photos / f"{i:02d}.png")
    options = {"model": tiny_dir, "shard_size": 4, "store_dtype": "float32", "device": "cpu", "batch_size": 2}
    first = embed_folder(photos, out, **options)
    assert first.model == str(tiny_dir.resolve()) and first.embedded == ("image",)
    assert [r.rows for r in first.reports] == [4, 3] and not first.plan.previous and not first.warnings
    assert first.timings["decode"] > 0 and first.timings["embed"] > 0

    for i in range(7, 10):
        images[i].save(photos / f"{i:02d}.png")  # new
    (photos / "01.png").unlink()  # removed from shard 0
    (photos / "05.png").unlink()  # removed from shard 1
    events = []
    second = embed_folder([photos], out, on_progress=events.append, **options)
    assert second.plan.counts == {"new": 3, "changed": 0, "removed": 2, "unchanged": 5}
    assert sorted(second.plan.keep) == [0, 1] and not second.plan.drop
    assert [(r.shard_id, r.items, r.rows) for r in second.reports] == [(2, 3, 3)]  # only the new items embedded
    kinds = [e.event for e in events]
    assert kinds[:2] == ["planned", "started"] and kinds[-1] == "shard" and set(kinds[2:-1]) == {"items"}
    assert events[1].total == 3 and sum(e.items for e in events if e.event == "items") == 3
    assert events[-1].report is second.reports[0]
    assert_equals_embedder(out, embedder, sorted(photos.iterdir()))

    third = embed_folder(photos, out, **options)
    assert not third.plan.changes and third.plan.kept == 3 and not third.reports


def test_a_run_killed_mid_way_is_resumed_by_embed_folder_to_the_same_bytes(tiny_dir, tmp_path):
    """Shard 0: 4 small images; shards 1 and 2: 4 slow ones each, 2 a batch. SIGKILL (no handler runs, nothing
    is saved at the end) comes once the subprocess's bar passes 6 items: shard 0 written, shard 1 under way."""
    photos = slow_photos(tmp_path / "photos")
    out, clean = tmp_path / "emb", tmp_path / "clean"
    argv = [str(photos), "--out", str(out), "--model", str(tiny_dir), "--batch-size", "2", "--device", "cpu",
            "--shard-size", "4"]
    status, err = stop_mid_run(argv, signal.SIGKILL, 12, after=6)
    assert status == -signal.SIGKILL, err

    options = {"model": tiny_dir, "shard_size": 4, "batch_size": 2, "device": "cpu"}
    resumed = embed_folder(photos, out, **options)
    assert resumed.plan.previous and 4 <= resumed.plan.counts["unchanged"] < 12, resumed.plan
    assert resumed.total("items") == 12 - resumed.plan.counts["unchanged"]
    embed_folder(photos, clean, **options)
    for name in ("img_emb/img_emb_000000.npy", "img_emb/img_emb_000001.npy", "img_emb/img_emb_000002.npy"):
        assert (out / name).read_bytes() == (clean / name).read_bytes(), name
    for shard in ("000000", "000001", "000002"):
        assert pq.read_table(out / "metadata" / f"metadata_{shard}.parquet").equals(
            pq.read_table(clean / "metadata" / f"metadata_{shard}.parquet"))
    assert not list((out / "altclip_run" / "partial").glob("*.npz"))


def test_without_a_model_the_folder_s_recorded_model_is_used(tiny_dir, embedder, tmp_path, capsys):
    photos, out = tmp_path / "photos", tmp_path / "emb"
    photos.mkdir()
    files = write_images(photos, 3, seed=6)
    embed_folder(photos, out, model=tiny_dir, store_dtype="float32", device="cpu")
    make_images(4, seed=6)[3].save(photos / "more.png")
    files.append(photos / "more.png")
    outcome = embed_folder(photos, out, store_dtype="float32", device="cpu")  # no model: the recorded one
    assert outcome.model == str(tiny_dir.resolve()) and outcome.total("rows") == 1
    assert_equals_embedder(out, embedder, files)
    # the command too: no --model on an existing folder is no longer "embeddings of another model"
    assert main(["embed", str(photos), "--out", str(out), "--store-dtype", "float32", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == f"nothing to do: all 2 shards are already in {out}"


def test_a_model_object_needs_a_name_for_a_new_folder(tiny_dir, embedder, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    files = write_images(photos, 2, seed=8)
    with pytest.raises(ValueError, match="give model_name"):
        embed_folder(photos, tmp_path / "emb", model=embedder)
    with pytest.raises(ValueError, match="batch_size: options of a new Embedder"):
        embed_folder(photos, tmp_path / "emb", model=embedder, model_name=str(tiny_dir), batch_size=4)
    outcome = embed_folder(photos, tmp_path / "emb", model=embedder, model_name="my-model", store_dtype="float32")
    assert outcome.model == "my-model"
    assert_equals_embedder(tmp_path / "emb", embedder, files)


def test_the_command_prints_the_warnings_the_call_returns(tiny_dir, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    write_images(photos, 3, seed=2)
    (photos / "broken.png").write_bytes(b"not a png")
    outcome = embed_folder(photos, tmp_path / "lib", model=tiny_dir, device="cpu")
    assert len(outcome.warnings) == 1 and outcome.warnings[0] == (
        f"skipped: cannot read {photos / 'broken.png'} as an image: not a format Pillow recognises")
    assert outcome.total("skipped") == 1 and outcome.total("rows") == 3
    out = tmp_path / "cli"
    assert main(["embed", str(photos), "--out", str(out), "--model", str(tiny_dir), "--device", "cpu", "--quiet"]) == 0
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert lines[0] == f"altclip: {outcome.warnings[0]}" and lines[1].startswith("altclip: time per stage: read ")
    assert captured.out.strip() == (f"wrote 3 image embedding rows in 1 shard to {out}; "
                                    "1 unreadable or incomplete sample skipped (listed above)")


def test_sigterm_is_ctrl_c_only_during_the_call_and_only_in_the_main_thread(tiny_dir, embedder, tmp_path):
    """During a main-thread call SIGTERM's handler raises KeyboardInterrupt, and the previous handler is back
    after; from another thread the call runs with the handler untouched. The Embedder is never patched (the old
    stage timer swapped its ``encode_pixels`` while a run went on: not safe for another thread using it)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    write_images(photos, 3, seed=5)

    def mine(signum, frame):
        pass

    seen = []

    def watch(event):
        if event.event == "items":
            seen.append((threading.current_thread().name, signal.getsignal(signal.SIGTERM), dict(vars(embedder))))

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        embed_folder(photos, tmp_path / "main", model=embedder, model_name=str(tiny_dir), on_progress=watch)
        assert signal.getsignal(signal.SIGTERM) is mine
        thread = threading.Thread(target=embed_folder, name="other", args=(photos, tmp_path / "other"),
                                  kwargs={"model": embedder, "model_name": str(tiny_dir), "on_progress": watch})
        thread.start()
        thread.join(timeout=120)
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
    handlers = {name: handler for name, handler, _ in seen}
    assert handlers["other"] is mine and handlers["MainThread"] is not mine
    with pytest.raises(KeyboardInterrupt):
        handlers["MainThread"](signal.SIGTERM, None)
    assert all("encode_pixels" not in attributes for _, _, attributes in seen)
    batch = next(embedder.iter_images(sorted(photos.iterdir())))
    assert batch.decode_seconds > 0 and batch.embed_seconds > 0


@pytest.mark.ray
def test_on_ray_the_same_worker_writes_what_a_local_run_writes(local_ray, tiny_dir, embedder, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    files = write_images(photos, 5, seed=12)
    events = []
    outcome = embed_folder(photos, tmp_path / "emb", model=tiny_dir, shard_size=2, store_dtype="float32",
                           distributor="ray", on_progress=events.append)
    assert sorted(r.shard_id for r in outcome.reports) == [0, 1, 2] and outcome.total("rows") == 5
    assert sum(e.items for e in events if e.event == "items") == 5
    workers = {r.worker.split(":")[-1] for r in outcome.reports}
    assert len(workers) == 1 and workers != {str(os.getpid())}  # one actor's process, not this one
    assert_equals_embedder(tmp_path / "emb", embedder, files)
    with pytest.raises(ValueError, match="every actor loads the model itself"):
        embed_folder(photos, tmp_path / "other", model=embedder, model_name="x", distributor="ray")
