"""The ``altclip`` command on the tiny checkpoint: embed (resumable), search, demo, and its error lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import make_images

from altclip_adapters import AltCLIP, cli
from altclip_adapters.inference.embedder import Embedder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    (root / "nested").mkdir()
    for i, image in enumerate(make_images(5, seed=7)):
        image.save(root / ("nested" if i % 2 else ".") / f"img{i}.jpg")
    return root


@pytest.fixture(scope="module")
def expected(tiny_dir, folder):
    """Embeddings of the folder's images, in the order embed lists them, straight from the pipeline."""
    paths = sorted(p for p in folder.rglob("*.jpg"))
    return [str(p) for p in paths], Embedder(AltCLIP.from_pretrained(tiny_dir)).images(paths).numpy()


def run(*argv: str) -> int:
    return cli.main(list(argv))


def test_console_script_is_declared():
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "altclip"]
    assert script.value == "altclip_adapters.cli:main"


def test_embed_folder_to_npy_then_search(tiny_dir, folder, expected, tmp_path, capsys):
    out = tmp_path / "index.npy"
    assert run("embed", str(folder), "--model", str(tiny_dir), "--out", str(out), "--quiet") == 0
    ids, embeddings = expected
    meta = json.loads((tmp_path / "index.ids.json").read_text())
    assert meta["ids"] == ids and meta["modality"] == "image" and meta["model"] == str(tiny_dir.resolve())
    np.testing.assert_allclose(np.load(out), embeddings, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["index.ids.json", "index.npy"]
    assert "wrote 5 image embeddings" in capsys.readouterr().out

    assert run("search", str(out), "一只猫的照片", "-k", "3") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    query = Embedder(AltCLIP.from_pretrained(tiny_dir)).texts(["一只猫的照片"])[0].numpy()
    best = ids[int(np.argmax(embeddings @ query))]
    assert lines[0].split()[0] == "1" and lines[0].endswith(best)


def test_embed_texts_to_parquet(tiny_dir, tmp_path, capsys):
    texts = tmp_path / "captions.txt"
    texts.write_text("a photo of a cat\n\n一只狗的照片\n猫の写真\n", encoding="utf-8")
    out = tmp_path / "texts.parquet"
    assert run("embed", str(texts), "--model", str(tiny_dir), "--out", str(out), "--quiet", "--batch-size", "2") == 0
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == ["a photo of a cat", "一只狗的照片", "猫の写真"]
    assert json.loads(table.schema.metadata[b"altclip"])["modality"] == "text"
    embeddings = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    expected = Embedder(AltCLIP.from_pretrained(tiny_dir)).texts(["a photo of a cat", "一只狗的照片", "猫の写真"])
    np.testing.assert_allclose(embeddings, expected.numpy(), atol=1e-6)
    assert "wrote 3 text embeddings" in capsys.readouterr().out
    assert run("search", str(out), "a cat", "-k", "1") == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1


def test_unreadable_images_are_reported_and_skipped(tiny_dir, folder, expected, tmp_path, capsys):
    bad = tmp_path / "photos"
    bad.mkdir()
    for path in sorted(folder.rglob("*.jpg"))[:2]:
        (bad / path.name).write_bytes(path.read_bytes())
    (bad / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "index.npy"
    assert run("embed", str(bad), "--model", str(tiny_dir), "--out", str(out), "--quiet") == 0
    captured = capsys.readouterr()
    assert [line for line in captured.err.splitlines() if "broken.jpg" in line] == [
        line for line in captured.err.splitlines() if line.startswith("altclip: skipped: cannot read ")
    ]
    assert "broken.jpg" in captured.err and "1 unreadable image skipped" in captured.out
    assert len(json.loads((tmp_path / "index.ids.json").read_text())["ids"]) == 2


def test_an_image_over_max_image_pixels_is_skipped_with_one_line(tiny_dir, folder, expected, tmp_path, capsys):
    """A (small) decompression bomb next to a good picture: reported in one line, the good one written; the
    option raises the limit past it."""
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    good = sorted(folder.rglob("*.jpg"))[0]
    (photos / good.name).write_bytes(good.read_bytes())
    Image.new("1", (200, 100)).save(photos / "bomb.png")
    out = tmp_path / "index.npy"
    assert run("embed", str(photos), "--model", str(tiny_dir), "--out", str(out), "--quiet", "--max-image-pixels", "10000") == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if "bomb.png" in line]
    assert len(lines) == 1 and "has 20,000 pixels, over the limit of 10,000" in lines[0], captured.err
    assert json.loads((tmp_path / "index.ids.json").read_text())["ids"] == [str(photos / good.name)]
    ids, embeddings = expected
    np.testing.assert_allclose(np.load(out)[0], embeddings[ids.index(str(good))], atol=1e-6)
    out2 = tmp_path / "all.npy"
    assert run("embed", str(photos), "--model", str(tiny_dir), "--out", str(out2), "--quiet", "--max-image-pixels", "none") == 0
    assert len(json.loads((tmp_path / "all.ids.json").read_text())["ids"]) == 2
    with pytest.raises(SystemExit) as usage_error:
        run("embed", str(photos), "--model", str(tiny_dir), "--out", str(out2), "--max-image-pixels", "0")
    assert usage_error.value.code == 2 and "--max-image-pixels: must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["embed", "{tmp}/missing", "--out", "{tmp}/x.npy"], "no such file or folder: {tmp}/missing"),
        (["embed", "{tmp}/empty", "--out", "{tmp}/x.npy"], "no image files"),
        (["embed", "{tmp}/blank.txt", "--out", "{tmp}/x.npy"], "no text lines in {tmp}/blank.txt"),
        (["embed", "{tmp}/blank.txt", "{tmp}/empty", "--out", "{tmp}/x.npy"], "either .txt files"),
        (["embed", "{tmp}/empty", "--out", "{tmp}/x.csv"], "--out must end in .npy or .parquet"),
        (["embed", "{tmp}/empty", "--out", "{tmp}/no/x.npy"], "the folder for --out does not exist"),
        (["embed", "{tmp}/only_broken", "--out", "{tmp}/x.npy", "--quiet"], "none of the 1 images could be read"),
        (["search", "{tmp}/missing.npy", "cat"], "no such index file"),
        (["search", "{tmp}/blank.txt", "cat"], "an index is a .npy or .parquet file"),
        (["demo", "--model", "{tmp}/missing"], "not a local folder, a registry name"),
        (["demo", "--model", "NoSuchModel"], "not a local folder, a registry name"),
    ],
)
def test_bad_inputs_get_one_clear_line(argv, message, tiny_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "only_broken").mkdir()
    (tmp_path / "only_broken" / "a.png").write_bytes(b"nope")
    (tmp_path / "blank.txt").write_text("\n  \n")
    argv = [a.format(tmp=tmp_path) for a in argv] + (["--model", str(tiny_dir)] if argv[0] == "embed" else [])
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("altclip: error: ") and message.format(tmp=tmp_path) in err[-1]


def test_demo_on_a_local_checkpoint(tiny_dir, capsys):
    assert run("demo", "--model", str(tiny_dir)) == 0
    out = capsys.readouterr().out
    assert out.count("image: ") == 3
    for line in [line for line in out.splitlines() if line.startswith("  ")]:
        probabilities = [float(word) for word in line.split() if word.replace(".", "").isdigit()]
        assert len(probabilities) == 3 and abs(sum(probabilities) - 1) < 0.02


def test_demo_offline_falls_back_to_a_random_tiny_checkpoint(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run(
        [sys.executable, "-m", "altclip_adapters.cli", "demo"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if line.startswith("altclip:")]
    assert len(notes) == 1 and "RANDOM tiny checkpoint" in notes[0]
    assert "random tiny checkpoint" in done.stdout and done.stdout.count("image: ") == 3
    assert "赤い丸" in done.stdout and "一个红色的圆" in done.stdout


def test_search_checks_the_embedding_size(tiny_dir, m18_dir, folder, tmp_path, capsys):
    out = tmp_path / "index.npy"
    assert run("embed", str(folder), "--model", str(tiny_dir), "--out", str(out), "--quiet") == 0
    assert run("search", str(out), "cat", "--model", str(m18_dir)) == 1
    assert "16-d embeddings but the model makes 40-d" in capsys.readouterr().err
    torch.testing.assert_close(torch.from_numpy(np.load(out)).norm(dim=-1), torch.ones(5))


def assert_same_weights(a, b):
    first, second = AltCLIP.from_pretrained(a).state_dict(), AltCLIP.from_pretrained(b).state_dict()
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], atol=0, rtol=0, msg=key)


@pytest.mark.parametrize("via", ["open_clip", "sentence-transformers"])
def test_convert_round_trips_through_each_layout(via, tiny_dir, tmp_path, capsys):
    assert run("convert", str(tiny_dir), "--to", via, "--out", str(tmp_path / via)) == 0
    marker = "open_clip_config.json" if via == "open_clip" else "modules.json"
    assert (tmp_path / via / marker).is_file()
    assert run("convert", str(tmp_path / via), "--to", "baai", "--out", str(tmp_path / "back")) == 0
    assert_same_weights(tiny_dir, tmp_path / "back")
    assert f"from {via}" in capsys.readouterr().out.splitlines()[-1]


def test_convert_to_native_sentence_transformers(tiny_dir, tmp_path, texts):
    from sentence_transformers import SentenceTransformer

    assert run("convert", str(tiny_dir), "--to", "sentence-transformers", "--native", "--out", str(tmp_path / "st")) == 0
    native = SentenceTransformer(str(tmp_path / "st"), device="cpu")
    expected = Embedder(AltCLIP.from_pretrained(tiny_dir)).texts(texts).numpy()
    np.testing.assert_allclose(native.encode(texts), expected, atol=1e-5)


def test_convert_bin_to_safetensors(tiny_bin_dir, tiny_dir, tmp_path):
    assert run("convert", str(tiny_bin_dir), "--to", "baai", "--out", str(tmp_path / "out")) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert_same_weights(tiny_bin_dir, tmp_path / "out")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{tiny}", "--to", "baai", "--out", "{full}"], "exists and is not an empty folder"),
        (["{tiny}", "--to", "open_clip", "--native", "--out", "{tmp}/n"], "--native only applies"),
        (["{tmp}/full", "--to", "open_clip", "--out", "{tmp}/n"], "is not a BAAI-layout"),
        (["{tmp}/missing", "--to", "open_clip", "--out", "{tmp}/n"], "not a local folder, a registry name"),
        (["{tiny}", "--arch", "AltCLIP", "--to", "open_clip", "--out", "{tmp}/n"], "--arch only applies"),
    ],
)
def test_convert_errors(argv, message, tiny_dir, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    argv = [a.format(tiny=tiny_dir, tmp=tmp_path, full=tmp_path / "full") for a in argv]
    assert cli.main(["convert", *argv]) == 1
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_convert_an_open_clip_training_checkpoint(tiny_dir, tmp_path, capsys):
    import open_clip

    folder = tmp_path / "openclip"
    assert run("convert", str(tiny_dir), "--to", "open_clip", "--out", str(folder)) == 0
    arch = f"local-dir:{folder}"
    model = open_clip.create_model(arch)
    with torch.no_grad():
        model.visual_projection.weight.mul_(2)  # as if trained further: the file, not the folder, must win
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "epoch_3.pt")
    assert run("convert", str(tmp_path / "epoch_3.pt"), "--arch", arch, "--to", "baai", "--out", str(tmp_path / "baai")) == 0
    converted = AltCLIP.from_pretrained(tmp_path / "baai")
    expected = AltCLIP.from_pretrained(tiny_dir).visual_projection.weight * 2
    torch.testing.assert_close(converted.visual_projection.weight, expected, atol=0, rtol=0)
    assert cli.main(["convert", str(tmp_path / "epoch_3.pt"), "--to", "baai", "--out", str(tmp_path / "x")]) == 1
    assert "needs --arch" in capsys.readouterr().err
