"""``add_embeddings`` on what Ray Data's own readers give (issue 19 item 4): ``read_images`` decodes by itself
(a palette PNG as its indices, a 16-bit PNG as uint16, no EXIF orientation), so with ``include_paths=True``
each row is read again by the package's loader, and without a usable path an array that cannot be a picture is
an error, never a silent wrong vector. The oracle is ``Embedder`` on the same files. README's Ray examples run
here as written (model, folders and resources swapped for the test's). Selected by ``-m ray``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from conftest import write_tar
from PIL import Image

from altclip_adapters.inference.embedder import Embedder
from altclip_adapters.collection.ray import add_embeddings

pytestmark = pytest.mark.ray
README = Path(__file__).parent.parent / "docs" / "ray.md"  # the Ray page: its examples run as written


@pytest.fixture(scope="module")
def pngs(tmp_path_factory) -> Path:
    """PNGs that Ray's decoding and the loader's disagree on, and a JPEG whose EXIF says 'rotate 90'."""
    folder = tmp_path_factory.mktemp("readers")
    rng = np.random.default_rng(7)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 36, 3), dtype=np.uint8))
    rgb.quantize(16).save(folder / "palette.png", transparency=3)
    rgb.quantize(8).save(folder / "palette-opaque.png")
    rgb.convert("L").save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 256, (24, 36, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 65536, (24, 36), dtype=np.uint16)).save(folder / "grey16.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb.save(folder / "rotated.jpg", exif=exif)
    return folder


@pytest.fixture(scope="module")
def expected(tiny_dir, pngs) -> dict[str, np.ndarray]:
    files = sorted(pngs.iterdir())
    embeddings = Embedder.from_pretrained(tiny_dir, device="cpu", batch_size=8).images(files).numpy()
    return {path.name: row for path, row in zip(files, embeddings)}


def _copy(source: Path, folder: Path) -> str:
    folder.mkdir(exist_ok=True)
    (folder / source.name).write_bytes(source.read_bytes())
    return str(folder / source.name)


@pytest.mark.parametrize(
    "names",
    [["palette.png", "grey.png", "rgba.png", "palette-opaque.png", "rotated.jpg"], ["grey16.png"]],
    ids=["8-bit", "16-bit"],  # Ray cannot put uint8 and uint16 arrays in one block: two datasets
)
def test_read_images_rows_equal_the_loader_or_are_errors(local_ray, tiny_dir, pngs, expected, tmp_path, names):
    """Each file three times: with its path (read again by the loader: equal to it), with no path (the array
    alone: a picture as Ray decoded it, or an error), with the path of another picture (another size: ignored)."""
    other = tmp_path / "other.png"
    Image.new("RGB", (5, 5), "red").save(other)
    files = [str(pngs / n) for n in names]
    files += [_copy(pngs / n, tmp_path / "alone") for n in names] + [_copy(pngs / n, tmp_path / "other") for n in names]

    def path_of(row: dict) -> dict:
        path = Path(row["path"])
        kind = {"alone": "alone-", "other": "other-"}.get(path.parent.name, "")
        return {**row, "name": kind + path.name, "path": {"alone-": "", "other-": str(other)}.get(kind, row["path"])}

    ds = ray.data.read_images(files, include_paths=True).map(path_of)
    rows = {row["name"]: row for row in add_embeddings(ds, model=str(tiny_dir), batch_size=8).take_all()}
    assert sorted(rows) == sorted(f"{kind}{n}" for kind in ("", "alone-", "other-") for n in names)
    for name in names:
        assert rows[name]["error"] == "", name
        np.testing.assert_allclose(rows[name]["embedding"], expected[name], atol=1e-5, err_msg=name)
    for name in names:
        for copy in (f"alone-{name}", f"other-{name}"):
            row = rows[copy]
            if name == "grey16.png":  # a uint16 array is no picture of the loader's: an error, not a vector
                assert row["error"] == "image arrays must hold uint8 pixels (0-255); got dtype uint16"
                assert np.isnan(row["embedding"]).all()
            else:
                assert row["error"] == ""
                if name in ("rgba.png", "grey.png"):  # pictures as Ray decoded them: the loader's too
                    np.testing.assert_allclose(row["embedding"], expected[name], atol=1e-5, err_msg=copy)


def _readme_blocks() -> list[str]:
    section = README.read_text(encoding="utf-8").split("In your own Ray Data pipeline", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


def test_readme_ray_examples_run_as_written(local_ray, tiny_dir, pngs, expected, tmp_path):
    blocks = _readme_blocks()
    assert len(blocks) == 2 and all("add_embeddings" in b for b in blocks)
    # the examples' data, built here: webdataset tars under laion/, the photos under photos/
    (tmp_path / "laion").mkdir()
    jpgs = {p.name: p for p in pngs.iterdir() if p.suffix == ".png"}
    samples = []
    for i, (name, path) in enumerate(sorted(jpgs.items())):  # PNG bytes as .jpg members: the loader sniffs
        samples.append({"__key__": f"{i:04d}", "jpg": path.read_bytes(), "txt": name.encode()})
    write_tar(tmp_path / "laion" / "00000.tar", samples)
    (tmp_path / "photos").symlink_to(pngs)
    swaps = {
        'model="AltCLIP"': f"model={str(tiny_dir)!r}", "num_gpus=1": "num_gpus=0", "actors=4": "actors=1",
        '"/data/': f'"{tmp_path}/',
    }
    namespace: dict = {}  # one session: the second example goes on from the first's imports
    for block in blocks:
        for old, new in swaps.items():
            block = block.replace(old, new)
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 (README's own code, run as a user would)
    table = pa.concat_tables(pq.read_table(p) for p in sorted((tmp_path / "laion-emb-parquet").glob("*.parquet")))
    rows = {row["txt"].decode(): row for row in table.to_pylist()}
    assert sorted(rows) == sorted(jpgs)
    for name, row in rows.items():
        np.testing.assert_allclose(row["embedding"], expected[name], atol=1e-5, err_msg=name)
    table = pa.concat_tables(pq.read_table(p) for p in sorted((tmp_path / "photos-emb-parquet").glob("*.parquet")))
    assert sorted(Path(p).name for p in table.column("path").to_pylist()) == sorted(expected)
    for path, row in zip(table.column("path").to_pylist(), table.column("embedding").to_pylist()):
        np.testing.assert_allclose(row, expected[Path(path).name], atol=1e-5)
