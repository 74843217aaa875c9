"""Bulk inputs as they come (issue 19 items 1-3, issue 17 item 1 on the way in), each built as a real file in
the test: phone and web photo formats found and read, caption files split where editors split them, blank
captions skipped by one rule, metadata of mixed types stored, sample names that would escape refused."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pillow_heif
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_images, write_tar
from PIL import Image

from altclip_adapters.collection import shards
from altclip_adapters.cli import main
from altclip_adapters.model.images import UnreadableImageError, describe, image_suffixes, load_image
from altclip_adapters.collection.inputs import find_images, read_text_lines, split_lines
from altclip_adapters.collection._metadata import MAX_CHARS
from altclip_adapters.inference.embedder import Embedder
from altclip_adapters.collection.shards import read_parquet, read_tar
from altclip_adapters.collection.store import read_embeddings, read_metadata

NO_HEIF = "import sys; sys.modules['pillow_heif'] = None\n"  # pillow-heif absent, as without the extra


def embed(*args: object) -> int:
    return main(["embed", *map(str, args), "--quiet", "--device", "cpu"])


def encoded(image: Image.Image, format: str) -> bytes:
    buffer = io.BytesIO()
    if format == "HEIF":
        pillow_heif.from_pillow(image).save(buffer, quality=-1)  # lossless
    else:
        image.save(buffer, format)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def embedder(tiny_dir) -> Embedder:
    return Embedder.from_pretrained(tiny_dir, device="cpu", batch_size=4)


@pytest.fixture
def photos(tmp_path) -> Path:
    """A phone/web photo folder: JPEG as .jpg and .JPG, JFIF, AVIF, HEIC, beside files that are not images."""
    folder = tmp_path / "photos"
    (folder / "web").mkdir(parents=True)
    pictures = make_images(5, seed=11)
    for picture, name, format in zip(
        pictures,
        ["a.jpg", "B.JPG", "web/c.jfif", "web/d.avif", "e.HEIC"],
        ["JPEG", "JPEG", "JPEG", "AVIF", "HEIF"],
    ):
        (folder / name).write_bytes(encoded(picture, format))
    (folder / "notes.txt").write_text("not an image")
    (folder / "web" / "data.h5").write_bytes(b"\x89HDF\r\n\x1a\n")  # a format Pillow only names, never decodes
    return folder


def test_discovery_follows_the_loader(photos):
    found = [p.relative_to(photos).as_posix() for p in find_images([photos])]
    assert found == ["B.JPG", "a.jpg", "e.HEIC", "web/c.jfif", "web/d.avif"]
    assert {".jfif", ".avif", ".heic", ".hif", ".jpg", ".png", ".webp", ".tiff", ".mpo"} <= image_suffixes()
    assert not {".pdf", ".h5", ".txt", ".json"} & image_suffixes()
    for path in find_images([photos]):  # every file found is one the loader reads
        assert load_image(path).mode == "RGB"
    heif = pillow_heif.open_heif(photos / "e.HEIC").to_pillow()  # the plugin's own decode
    assert np.asarray(load_image(photos / "e.HEIC")).tolist() == np.asarray(heif.convert("RGB")).tolist()


def test_embed_reads_every_photo_of_the_folder(tiny_dir, embedder, photos, tmp_path, capsys):
    out = tmp_path / "emb"
    assert embed(photos, "--out", out, "--model", tiny_dir) == 0
    assert [line for line in capsys.readouterr().err.splitlines() if "time per stage" not in line] == []
    embeddings, metadata = read_embeddings(out)
    files = find_images([photos])
    assert metadata.column("image_path").to_pylist() == [str(p) for p in files]
    np.testing.assert_allclose(embeddings, embedder.images(files).numpy(), atol=2e-3)  # float16 storage


def _python(code: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=timeout)


def test_without_pillow_heif_a_heic_photo_is_named_once_with_the_extra(tiny_dir, photos, tmp_path):
    out = tmp_path / "emb"
    result = _python(
        NO_HEIF + "from altclip_adapters.cli import main\n"
        f"sys.exit(main(['embed', {str(photos)!r}, '--out', {str(out)!r}, '--model', {str(tiny_dir)!r}, "
        "'--device', 'cpu', '--quiet']))"
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "time per stage" not in line]
    assert lines == [line for line in lines if line.startswith("altclip: skipped: ")] and len(lines) == 1
    assert "e.HEIC" in lines[0] and "pip install 'altclip-adapters[heif]'" in lines[0]
    assert result.stdout.strip().endswith("; 1 unreadable or incomplete sample skipped (listed above)")
    assert result.stdout.startswith("wrote 4 image embedding rows")
    # the loader itself says so for the file in any form, and reads the other formats
    heic = (photos / "e.HEIC").read_bytes()
    result = _python(
        NO_HEIF + "from altclip_adapters.model.images import load_image\n"
        f"print(load_image({str(photos / 'web' / 'd.avif')!r}).mode)\n"
        f"load_image(open({str(photos / 'e.HEIC')!r}, 'rb').read())"
    )
    assert result.stdout == "RGB\n"
    assert result.stderr.strip().splitlines()[-1] == (
        f"altclip_adapters.model.images.UnreadableImageError: cannot read {describe(heic)} as an image: "
        "HEIF/HEIC photos need the pillow-heif plugin: pip install 'altclip-adapters[heif]'"
    )


def test_a_file_that_only_looks_like_heif_is_unreadable_as_before(tmp_path):
    with pytest.raises(UnreadableImageError, match="cannot read .* as an image"):
        load_image(b"\0\0\0\x1cftypheic" + b"\0" * 40)


# caption files ------------------------------------------------------------------------------------------
CAPTIONS = ["a photo of a cat", "line\u2028separator inside", "next\x85line inside", "form\x0cfeed inside", "一只狗"]


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_caption_file_lines_are_where_editors_see_them(tiny_dir, embedder, tmp_path, capsys, newline):
    path = tmp_path / "captions.txt"
    path.write_bytes(("\ufeff" + newline.join(CAPTIONS[:2] + ["", " \t"] + CAPTIONS[2:]) + newline).encode())
    assert split_lines(path.read_text(encoding="utf-8")) == CAPTIONS[:2] + ["", " \t"] + CAPTIONS[2:]
    found = read_text_lines([path])
    assert (found.lines, found.blank) == (CAPTIONS, 2)
    out = tmp_path / "captions.npy"
    assert main(["embed", str(path), "--out", str(out), "--model", str(tiny_dir), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.endswith("; 2 blank lines skipped\n")
    ids = json.loads(out.with_suffix(".ids.json").read_text())["ids"]
    assert ids == CAPTIONS
    np.testing.assert_allclose(np.load(out), embedder.texts(CAPTIONS).numpy(), atol=1e-5)


def test_a_last_line_without_newline_counts_and_a_lone_bom_is_no_line(tmp_path):
    assert split_lines("a\nb") == ["a", "b"] and split_lines("\ufeff") == [] and split_lines("") == []
    assert split_lines("a\r\r\nb\rc\r") == ["a\r", "b\rc"]  # only the \r of a line end goes


def _both(parquet_or_tars: list[Path], tiny_dir, out: Path) -> int:
    return embed(*parquet_or_tars, "--out", out, "--model", tiny_dir, "--modality", "both")


def test_blank_captions_in_tars_and_parquet_are_skipped_and_counted(tiny_dir, embedder, tmp_path, capsys):
    pictures = [encoded(p, "PNG") for p in make_images(4, seed=5)]
    captions = ["a red square", "", "  \u2028 ", "a blue sky"]
    tar = write_tar(tmp_path / "00000.tar", [
        {"__key__": f"{i:04d}", "png": data, "txt": caption.encode()} for i, (data, caption) in enumerate(zip(pictures, captions))
    ])
    parquet = tmp_path / "00000.parquet"
    pq.write_table(pa.table({"key": [f"{i:04d}" for i in range(4)], "txt": captions, "png": pictures}), parquet)
    for source in (read_tar(str(tar)), read_parquet(str(parquet))):
        assert [s.caption for s in source.samples] == ["a red square", None, None, "a blue sky"]
        assert [s.metadata["caption"] for s in source.samples] == captions  # the dataset's text, as it was
    for inputs in ([tar], [parquet]):
        out = tmp_path / f"emb-{inputs[0].suffix[1:]}"
        assert _both(inputs, tiny_dir, out) == 0
        err = [line for line in capsys.readouterr().err.splitlines() if "time per stage" not in line]
        assert err == [f"altclip: skipped: {inputs[0]}:{key}: blank caption" for key in ("0001", "0002")]
        texts, metadata = read_embeddings(out, "text")
        assert metadata.column("caption").to_pylist() == ["a red square", "a blue sky"]
        np.testing.assert_allclose(texts, embedder.texts(["a red square", "a blue sky"]).numpy(), atol=2e-3)


# metadata of mixed types -----------------------------------------------------------------------------------
def _json_tar(path: Path, fields: list[dict], texts: list[bytes] | None = None) -> Path:
    pictures = [encoded(p, "PNG") for p in make_images(len(fields), seed=len(fields))]
    return write_tar(path, [
        {"__key__": f"{path.stem}_{i}", "png": data, "txt": (texts or [b"a photo"] * len(fields))[i], "json": json.dumps(f).encode()}
        for i, (data, f) in enumerate(zip(pictures, fields))
    ])


def test_metadata_of_mixed_types_never_stops_a_run(tiny_dir, tmp_path, capsys):
    huge = "x" * (MAX_CHARS + 10)
    first = _json_tar(tmp_path / "00000.tar", [
        {"width": 640, "score": 1, "exif": {"Make": "Canon", "ISO": 100}, "tags": ["a", "b"], "only_here": True},
        {"width": "unknown", "score": 2.5, "": "empty name", "a.b/c d": 1, "ünï": None, "long": huge},
    ], texts=[b"a photo", b"caf\xe9 au lait"])
    second = _json_tar(tmp_path / "00001.tar", [{"width": 480, "score": "high"}, {"height": 3.0, "score": None}])
    shard = read_tar(str(first))
    assert shard.skipped == [] and [s.caption for s in shard.samples] == ["a photo", "caf\ufffd au lait"]
    assert sorted(shard.notes) == sorted([
        f"{first}:00000_1: the caption (.txt) is not UTF-8 (byte 0xe9 at offset 3): bad bytes replaced by U+FFFD",
        f"{first}:00000_1: field 'width' is 'unknown', not an integer: stored as null (the first such value of this shard)",
        (
            f"{first}:00000_1: field 'long' holds {MAX_CHARS + 10:,} characters: stored cut to {MAX_CHARS:,} "
            "(the first such value of this shard)"
        ),
    ])
    out = tmp_path / "emb"
    assert embed(first, second, "--out", out, "--model", tiny_dir) == 0
    embeddings, metadata = read_embeddings(out)  # both shards written, and their metadata concatenates
    assert len(embeddings) == 4 and metadata.num_rows == 4
    rows = metadata.to_pylist()
    assert [r["width"] for r in rows] == [640, None, 480, None] and metadata.schema.field("width").type == pa.int64()
    assert [r["height"] for r in rows] == [None, None, None, 3]
    assert [r["score"] for r in rows] == ["1", "2.5", "high", None]
    assert json.loads(rows[0]["exif"]) == {"Make": "Canon", "ISO": 100} and rows[0]["tags"] == '["a", "b"]'
    assert [r["only_here"] for r in rows] == ["true", None, None, None]
    assert (rows[1][""], rows[1]["a.b/c d"], rows[1]["ünï"]) == ("empty name", "1", None)
    assert rows[1]["long"] == huge[:MAX_CHARS]
    assert read_metadata(out).column_names[:2] == ["image_path", "caption"]


def test_a_json_member_too_large_to_parse_is_named_and_the_rest_kept(tmp_path):
    path = _json_tar(tmp_path / "big.tar", [{"a": 1}, {"blob": "y" * (1 << 20)}, {"a": 2}])
    shard = read_tar(str(path))
    assert [s.key for s in shard.samples] == ["big_0", "big_2"]
    assert shard.skipped == [f"{path}:big_1: the .json member is over 1,048,576 bytes"]


# sample names that would escape the collection -----------------------------------------------------------
@pytest.mark.parametrize(
    "name, why",
    [
        ("../../../../../../../../etc/passwd", "has a '..' component"),
        ("/etc/hostname", "is an absolute path"),
        ("photos/../../secret", "has a '..' component"),
        ("C:/Windows/win", "is an absolute path"),
        ("a\\b\\c", "has a backslash"),
        ("bad\x1b[2Jname", "has control characters"),
    ],
)
def test_unsafe_sample_names_are_refused_in_tars_and_parquet(tiny_dir, tmp_path, name, why):
    pictures = [encoded(p, "PNG") for p in make_images(2, seed=2)]
    tar = write_tar(tmp_path / "00000.tar", [{"__key__": name, "png": pictures[0]}, {"__key__": "ok/0001", "png": pictures[1]}])
    parquet = tmp_path / "00000.parquet"
    pq.write_table(pa.table({"key": [name, "ok/0001"], "png": pictures}), parquet)
    for source, path in ((read_tar(str(tar)), tar), (read_parquet(str(parquet)), parquet)):
        assert [s.metadata["image_path"] for s in source.samples] == ["ok/0001"]
        assert source.skipped == [
            f"{path}:{name!r}: the sample name {why}: left out (it would name a file outside the collection)"
        ]


def test_parquet_shards_whose_column_types_disagree_are_all_written(tiny_dir, tmp_path):
    pictures = [encoded(p, "PNG") for p in make_images(4, seed=9)]
    first, second = tmp_path / "00000.parquet", tmp_path / "00001.parquet"
    pq.write_table(pa.table({
        "key": ["a", "b"], "png": pictures[:2], "txt": [b"caf\xe9", b"tea"], "score": [1, 2], "width": [640, 480],
    }), first)
    pq.write_table(pa.table({
        "key": ["c", "d"], "png": pictures[2:], "txt": [b"milk", b"water"], "score": ["high", "low"],
        "width": ["unknown", "320"],
    }), second)
    shard = read_parquet(str(first))
    assert [s.caption for s in shard.samples] == ["caf\ufffd", "tea"]
    assert shard.notes == [f"{first}:a: the caption is not UTF-8 (byte 0xe9 at offset 3): bad bytes replaced by U+FFFD"]
    assert read_parquet(str(second)).notes == [
        f"{second}:c: field 'width' is 'unknown', not an integer: stored as null (the first such value of this shard)"
    ]
    out = tmp_path / "emb"
    assert embed(first, second, "--out", out, "--model", tiny_dir, "--modality", "both") == 0
    metadata = read_metadata(out)
    assert metadata.column("score").to_pylist() == ["1", "2", "high", "low"]
    assert metadata.column("width").to_pylist() == [640, 480, None, 320]
    assert metadata.column("caption").to_pylist() == ["caf\ufffd", "tea", "milk", "water"]


def test_tar_members_in_any_format_the_loader_reads_are_the_image(tmp_path):
    pictures = make_images(3, seed=4)
    formats = [("avif", "AVIF"), ("JFIF", "JPEG"), ("heic", "HEIF")]
    tar = write_tar(tmp_path / "00000.tar", [
        {"__key__": f"{i:04d}", ext: encoded(picture, format), "txt": b"a photo"}
        for i, (picture, (ext, format)) in enumerate(zip(pictures, formats))
    ])
    shard = read_tar(str(tar))
    assert [s.image is not None for s in shard.samples] == [True, True, True]
    assert [load_image(s.image).size for s in shard.samples] == [p.size for p in pictures]


def test_a_shard_keeps_a_bounded_number_of_field_names_and_skips_oversized_members(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "MAX_COLUMNS", 4)  # the limits made small, so that the test's files are
    path = _json_tar(tmp_path / "wide.tar", [{"a": 1, "b": 2}, {"c": 3, "d": 4, "e": 5}, {"a": 6, "f": 7}])
    shard = read_tar(str(path))
    assert [sorted(s.metadata) for s in shard.samples] == [
        ["a", "b", "caption", "image_path"], ["c", "caption", "d", "image_path"], ["a", "caption", "image_path"]
    ]
    assert shard.notes == [f"{path}:wide_1: over 4 field names in this shard: 'e' and later new names left out"]
    monkeypatch.setattr(shards, "MAX_MEMBER_BYTES", 1000)
    big = write_tar(tmp_path / "big.tar", [{"__key__": "x", "png": b"\0" * 1001}, {"__key__": "y", "png": b"\0" * 10}])
    shard = read_tar(str(big))
    assert [s.key for s in shard.samples] == ["y"]
    assert shard.skipped == [f"{big}:x: member 'x.png' is over 1,000 bytes: not read"]
