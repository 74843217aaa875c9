"""Embedding folders in clip-retrieval's layout, plus an ``altclip.json`` sidecar.

Layout (the one ``clip-retrieval inference`` writes, ``clip_retrieval/clip_inference/writer.py``)::

    DIR/img_emb/img_emb_000000.npy        float16 or float32 [rows, dim], rows L2-normalised
    DIR/text_emb/text_emb_000000.npy      same rows, text side (when texts were embedded)
    DIR/metadata/metadata_000000.parquet  one row per embedding row, same order
    DIR/altclip.json                      ours: model, dim, dtype, modalities, format version

Readers concatenate the shards in file-name order (embedding-reader sorts its glob; clip-retrieval's
back end sorts ``metadata/*.parquet``), so shard numbers are zero-padded to :data:`SHARD_DIGITS`
digits and row ``i`` of the collection is the same row for the image embeddings, the text
embeddings and the metadata. When a folder holds both modalities, every shard has both (a sample
whose image could not be read is dropped from the shard, caption included, as clip-retrieval does).

Metadata columns follow clip-retrieval's names: ``image_path`` (file path, or the webdataset
``__key__``), ``caption``, then the fields of the sample's json (img2dataset writes ``key``, ``url``,
``caption``, ``width``, ``height``, ...). Any columns are accepted; these are the ones readers
(``altclip search``, clip-retrieval's back end) display.

A shard with no rows writes no files (embedding-reader's ``parquet_npy`` mode would pair an empty
``.npy``, which it skips, with the next shard's parquet); it is recorded as done by an empty marker
file ``DIR/altclip_empty/N`` so that a resumed run does not redo it.
"""

from __future__ import annotations

import fcntl
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from altclip_adapters.atomic import write_bytes, write_json, write_with
from altclip_adapters.collection.files import save_npy
from altclip_adapters.extras import require

if TYPE_CHECKING:
    import pyarrow as pa

FORMAT_VERSION = 1
MANIFEST = "altclip.json"
SHARD_DIGITS = 6  # shard N is written as N zero-padded to this width; 0 <= N < 10**SHARD_DIGITS
Modality = Literal["image", "text"]  # the one spelling of a modality; check values with check_modality()
MODALITIES: tuple[Modality, ...] = ("image", "text")
EMBEDDING_DIRS = {"image": "img_emb", "text": "text_emb"}  # folder == file prefix, as clip-retrieval names them
DTYPES = ("float16", "float32")
NORM_TOLERANCE = 1e-2  # rows given to the writer must have an L2 norm within this of 1
_EMPTY_DIR = "altclip_empty"
LOCK_FILE = "altclip.lock"


def check_modality(value: object) -> Modality:
    """``value`` as a :data:`Modality`; ValueError naming it when it is not ``"image"`` or ``"text"``."""
    if value not in MODALITIES:
        raise ValueError(f"modality must be 'image' or 'text'; got {value!r}")
    return cast(Modality, value)


def shard_name(shard_id: int) -> str:
    """``shard_id`` zero-padded to :data:`SHARD_DIGITS` digits; ValueError outside ``0 .. 10**SHARD_DIGITS - 1``."""
    if isinstance(shard_id, bool) or not isinstance(shard_id, (int, np.integer)):
        raise TypeError(f"shard_id must be an int; got {type(shard_id).__name__}")
    if not 0 <= shard_id < 10**SHARD_DIGITS:
        raise ValueError(f"shard_id must be in 0..{10**SHARD_DIGITS - 1}; got {shard_id}")
    return str(int(shard_id)).zfill(SHARD_DIGITS)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The ``altclip.json`` sidecar of an embedding folder: ``{"format_version": int, "model": str,
    "dim": int, "dtype": "float16"|"float32", "modalities": ["image", "text"] (a subset), "layout":
    "clip-retrieval"}``. Raises FileNotFoundError when the folder has none (e.g. one written by
    clip-retrieval itself) and ValueError for a newer format version."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {MANIFEST}: not an embedding folder written by altclip embed")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {manifest['format_version']}; this altclip-adapters reads up to "
            f"{FORMAT_VERSION}: upgrade altclip-adapters"
        )
    return manifest


def _metadata_table(metadata: pa.Table | Sequence[dict]) -> pa.Table:
    """A pyarrow Table from a Table (as it is) or a list of dicts (columns: the union of the dicts' keys, in
    first-seen order, a key missing from a row null there; each column typed by its name alone, so that every
    shard of a folder agrees whatever its values: :mod:`altclip_adapters.collection._metadata`)."""
    from altclip_adapters.collection._metadata import INTEGER_COLUMNS, metadata_cell

    pa = require("pyarrow", "cli", "An embedding folder's metadata")
    if isinstance(metadata, pa.Table):
        return metadata
    if isinstance(metadata, (str, bytes)) or not isinstance(metadata, Sequence):
        raise TypeError(f"metadata must be a pyarrow.Table or a list of dicts; got {type(metadata).__name__}")
    names: dict[str, None] = {}
    for i, row in enumerate(metadata):
        if not isinstance(row, dict):
            raise TypeError(f"metadata row {i} is a {type(row).__name__}, not a dict")
        names.update(dict.fromkeys(row))
    return pa.table({
        name: pa.array(
            [metadata_cell(name, row.get(name))[0] for row in metadata],
            pa.int64() if name in INTEGER_COLUMNS else pa.string(),
        )
        for name in names
    }) if names else pa.table({})


def _check_embeddings(name: str, array: np.ndarray) -> np.ndarray:
    """``array`` as float32 [rows, dim], rows renormalised; ValueError naming what is wrong."""
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(f"{name} must be a 2-d array [rows, dim]; got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name} must hold floats; got {array.dtype}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    norms = np.linalg.norm(array, axis=1)
    if len(norms) and np.abs(norms - 1).max() > NORM_TOLERANCE:
        raise ValueError(
            f"{name} rows are not L2-normalised (norms {norms.min():.4g}..{norms.max():.4g}); "
            "embed with normalize=True or divide each row by its norm"
        )
    return array / norms[:, None] if len(norms) else array


class EmbeddingWriter:
    """Writes shards of an embedding folder (layout: module docstring); each file atomically.

    ``model`` is what readers load to embed queries (a registry name, hub id or absolute local
    folder); ``dtype`` the stored float type. Several writers (processes, Ray actors, machines on a
    shared file system) may write disjoint shards of one folder at once: the first shard written
    creates ``altclip.json`` (claimed with an atomic hard link), the others must agree with it.

    Raises ValueError when the folder already holds another model's embeddings or another dtype.
    """

    def __init__(self, folder: str | Path, *, model: str, dtype: str = "float16"):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
        if not isinstance(model, str) or not model:
            raise ValueError("model must be a non-empty string (registry name, hub id or local folder)")
        self.folder = Path(folder)
        self.model = model
        self.dtype = dtype
        if self.folder.exists() and not self.folder.is_dir():
            raise NotADirectoryError(f"{self.folder} exists and is not a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        if (self.folder / MANIFEST).is_file():
            self._check_manifest(read_manifest(self.folder))

    def _check_manifest(self, manifest: dict[str, Any], dim: int | None = None, modalities: list[str] | None = None) -> None:
        here = f"{self.folder} holds"
        if manifest.get("model") != self.model:
            raise ValueError(f"{here} embeddings of another model ({manifest.get('model')}), not {self.model}: use a new folder")
        if manifest.get("dtype") != self.dtype:
            raise ValueError(f"{here} {manifest.get('dtype')} embeddings; this writer writes {self.dtype}")
        if dim is not None and manifest.get("dim") != dim:
            raise ValueError(f"{here} {manifest.get('dim')}-d embeddings; this shard's are {dim}-d")
        if modalities is not None and manifest.get("modalities") != modalities:
            raise ValueError(
                f"{here} {' and '.join(manifest.get('modalities', []))} embeddings in every shard; this shard has "
                f"{' and '.join(modalities)} (every shard must have the same modalities, rows aligned)"
            )

    def _claim_manifest(self, dim: int, modalities: list[str]) -> None:
        path = self.folder / MANIFEST
        if not path.is_file():
            manifest = {"format_version": FORMAT_VERSION, "layout": "clip-retrieval", "model": self.model,
                        "dim": dim, "dtype": self.dtype, "modalities": modalities}
            try:
                write_json(path, manifest, exclusive=True)  # never overwrites: the first writer wins
            except FileExistsError:
                pass
        self._check_manifest(read_manifest(self.folder), dim, modalities)

    def write_shard(
        self,
        shard_id: int,
        *,
        image_embeddings: np.ndarray | None = None,
        text_embeddings: np.ndarray | None = None,
        metadata: pa.Table | Sequence[dict],
    ) -> None:
        """Write shard ``shard_id``: the embeddings given (float [rows, dim], rows L2-normalised,
        stored as this writer's dtype after renormalising) and ``metadata`` (one row per embedding
        row, same order). The metadata parquet is written last, so a shard is done (see
        :meth:`done_shards`) only once all its files are complete; rewriting a shard replaces it.

        Raises ValueError when no embeddings are given, row counts differ, image and text dims
        differ, rows are not normalised or hold NaN, or the shard disagrees with the folder's
        ``altclip.json`` (model, dtype, dim, modalities); TypeError for a bad ``metadata`` type.
        """
        name = shard_name(shard_id)
        given = {m: e for m, e in (("image", image_embeddings), ("text", text_embeddings)) if e is not None}
        if not given:
            raise ValueError("write_shard needs image_embeddings, text_embeddings or both")
        arrays = {m: _check_embeddings(f"{m}_embeddings", e) for m, e in given.items()}
        table = _metadata_table(metadata)
        rows = {f"{m}_embeddings": len(a) for m, a in arrays.items()} | {"metadata": table.num_rows}
        if len(set(rows.values())) != 1:
            raise ValueError("row counts differ: " + ", ".join(f"{k} {v}" for k, v in rows.items()))
        dims = {m: a.shape[1] for m, a in arrays.items()}
        if len(set(dims.values())) != 1:
            raise ValueError(f"image and text embeddings differ in dim: {dims['image']} and {dims['text']}")
        self._claim_manifest(next(iter(dims.values())), list(arrays))
        if table.num_rows == 0:
            write_bytes(self.folder / _EMPTY_DIR / name, b"")
            return
        pq = require("pyarrow.parquet", "cli", "An embedding folder's metadata")
        for modality, array in arrays.items():
            prefix = EMBEDDING_DIRS[modality]
            (self.folder / prefix).mkdir(exist_ok=True)
            stored = np.ascontiguousarray(array.astype(self.dtype))
            write_with(self.folder / prefix / f"{prefix}_{name}.npy", save_npy(stored))
        (self.folder / "metadata").mkdir(exist_ok=True)
        write_with(self.folder / "metadata" / f"metadata_{name}.parquet", lambda f: pq.write_table(table, f))

    def done_shards(self) -> set[int]:
        """Numbers of the shards already written completely (their metadata parquet exists, or
        they were empty): what a resumed run skips."""
        return done_shards(self.folder)


def done_shards(folder: str | Path) -> set[int]:
    """Numbers of the complete shards of an embedding folder (see :meth:`EmbeddingWriter.done_shards`)."""
    folder = Path(folder)
    done = {int(m.group(1)) for p in (folder / "metadata").glob("metadata_*.parquet")
            if (m := re.fullmatch(r"metadata_(\d+)\.parquet", p.name))}
    return done | {int(p.name) for p in (folder / _EMPTY_DIR).glob("*") if p.name.isdigit()}


def folder_modalities(folder: str | Path) -> list[str]:
    """The modalities an embedding folder holds: from ``altclip.json``, else (a folder written by
    clip-retrieval) those whose ``img_emb``/``text_emb`` folder holds ``.npy`` files."""
    folder = Path(folder)
    if (folder / MANIFEST).is_file():
        return list(read_manifest(folder)["modalities"])
    return [m for m in MODALITIES if any((folder / EMBEDDING_DIRS[m]).glob("*.npy"))]


def _shard_files(folder: Path, modality: str) -> list[tuple[Path, Path]]:
    """(embedding file, metadata file) per shard in reading order; ValueError for an orphan file."""
    prefix = EMBEDDING_DIRS[check_modality(modality)]
    embeddings = {p.name[len(prefix) + 1 : -4]: p for p in (folder / prefix).glob(f"{prefix}_*.npy")}
    metadata = {p.name[9:-8]: p for p in (folder / "metadata").glob("metadata_*.parquet")}
    if not embeddings:
        held = folder_modalities(folder) if folder.is_dir() else []
        raise FileNotFoundError(
            f"{folder} has no {modality} embeddings ({prefix}/*.npy)"
            + (f"; it holds {' and '.join(held)} embeddings" if held else "")
        )
    for number in sorted(embeddings.keys() ^ metadata.keys()):
        if number in embeddings:
            raise ValueError(
                f"shard {number} is incomplete: {embeddings[number]} has no metadata/metadata_{number}.parquet "
                "(an interrupted run: rerun it to finish the shard, or delete the file)"
            )
        raise ValueError(f"shard {number}: {metadata[number]} has no {prefix}/{prefix}_{number}.npy")
    return [(embeddings[n], metadata[n]) for n in sorted(embeddings)]


@dataclass(frozen=True)
class ShardFiles:
    """One complete shard of one modality: its files, its row count and a fingerprint that changes whenever
    either file is replaced (every write renames a new file into place, so its mtime changes; ``cp -a`` and
    ``mv`` keep it)."""

    shard_id: int
    embeddings: Path
    metadata: Path
    rows: int
    fingerprint: str


def _stat_token(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def shards(folder: str | Path, modality: str = "image") -> list[ShardFiles]:
    """The complete shards of ``modality`` in reading order, from file headers only (no embedding or metadata
    row is read). Rows of shard ``i`` come after those of every shard before it. Raises as :func:`iter_embeddings`."""
    out = []
    for emb, meta in _shard_files(Path(folder), modality):
        rows = np.load(emb, mmap_mode="r").shape[0]
        out.append(ShardFiles(int(emb.stem.rsplit("_", 1)[1]), emb, meta, rows,
                              f"{rows}:{_stat_token(emb)}:{_stat_token(meta)}"))
    return out


def iter_embeddings(folder: str | Path, modality: str = "image") -> Iterator[np.ndarray]:
    """The embeddings of each shard in row order, memory-mapped read-only in their stored dtype
    (float16 or float32, [rows, dim]): for streaming over collections larger than memory.

    Raises FileNotFoundError when the folder has no embeddings of ``modality`` and ValueError for
    an incomplete shard or shards of different dims.
    """
    dim = None
    for path, _ in _shard_files(Path(folder), modality):
        array = np.load(path, mmap_mode="r")
        if array.ndim != 2 or (dim is not None and array.shape[1] != dim):
            raise ValueError(f"{path} holds an array of shape {array.shape}; the shards before it are {dim}-d")
        dim = array.shape[1]
        yield array


def read_metadata(folder: str | Path, modality: str = "image") -> pa.Table:
    """All metadata rows of the folder, aligned with the rows of ``modality``'s embeddings (shards
    whose json fields differ are unified: a column missing from a shard is null there)."""
    pa = require("pyarrow", "cli", "An embedding folder's metadata")
    pq = require("pyarrow.parquet", "cli", "An embedding folder's metadata")
    tables = [pq.read_table(meta) for _, meta in _shard_files(Path(folder), modality)]
    return pa.concat_tables(tables, promote_options="permissive")


def read_embeddings(folder: str | Path, modality: str = "image") -> tuple[np.ndarray, pa.Table]:
    """(embeddings float32 [N, dim], metadata Table of N rows in the same order) of one modality.

    Loads everything into memory (4 bytes x N x dim); use :func:`iter_embeddings` to stream.
    Raises FileNotFoundError when the folder has no ``modality`` embeddings, ValueError when a
    shard's embedding and metadata row counts differ or a shard is incomplete.
    """
    pq = require("pyarrow.parquet", "cli", "An embedding folder's metadata")
    shards = _shard_files(Path(folder), modality)
    arrays = list(iter_embeddings(folder, modality))
    for (path, meta), array in zip(shards, arrays):
        rows = pq.read_metadata(meta).num_rows
        if rows != len(array):
            raise ValueError(f"{path} has {len(array)} rows but {meta} has {rows}")
    out = np.empty((sum(map(len, arrays)), arrays[0].shape[1]), np.float32)
    start = 0
    for array in arrays:
        out[start : start + len(array)] = array
        start += len(array)
    return out, read_metadata(folder, modality)


# changing a folder shard by shard (altclip_adapters.collection.worker's incremental runs) ------------------------------
def _shard_paths(folder: Path, shard_id: int) -> dict[str, Path]:
    """The files shard ``shard_id`` may have: one per modality, then ``metadata`` (whether or not they exist)."""
    name = shard_name(shard_id)
    paths = {m: folder / d / f"{d}_{name}.npy" for m, d in EMBEDDING_DIRS.items()}
    return paths | {"metadata": folder / "metadata" / f"metadata_{name}.parquet"}


def shard_ids(folder: str | Path) -> set[int]:
    """Numbers of every shard with any file in the folder, complete or not (empty markers included)."""
    folder = Path(folder)
    found = {int(m.group(1)) for d in [*EMBEDDING_DIRS.values(), "metadata"] for p in (folder / d).glob("*_*.*")
             if (m := re.fullmatch(r"[a-z_]+_(\d+)\.(npy|parquet)", p.name))}
    return found | done_shards(folder)


def shard_rows(folder: str | Path, shard_id: int) -> dict[str, int]:
    """Rows of each file shard ``shard_id`` has, from file headers (``{"image": n, "metadata": n, ...}``; files
    that do not exist are left out; an empty shard's marker counts as ``{"metadata": 0}``); OSError/ValueError
    for a file that cannot be read."""
    pq = require("pyarrow.parquet", "cli", "An embedding folder's metadata")
    folder = Path(folder)
    rows = {}
    for part, path in _shard_paths(folder, shard_id).items():
        if path.is_file():
            rows[part] = pq.read_metadata(path).num_rows if part == "metadata" else np.load(path, mmap_mode="r").shape[0]
    if (folder / _EMPTY_DIR / shard_name(shard_id)).is_file():
        rows.setdefault("metadata", 0)
    return rows


def delete_shard(folder: str | Path, shard_id: int) -> None:
    """Remove every file of shard ``shard_id`` (the metadata first, so that the shard stops counting as done at
    once); nothing happens for a shard that has none."""
    folder = Path(folder)
    paths = _shard_paths(folder, shard_id)
    for path in [paths.pop("metadata"), *paths.values(), folder / _EMPTY_DIR / shard_name(shard_id)]:
        path.unlink(missing_ok=True)


def keep_rows(folder: str | Path, shard_id: int, rows: Sequence[int]) -> None:
    """Rewrite shard ``shard_id`` with only ``rows`` (row numbers within the shard, in the order given), each file
    atomically and the metadata last; the stored values are copied bit for bit (nothing is re-embedded or
    renormalised). No rows left: the shard becomes an empty one (its files removed, the empty marker written, as
    :meth:`EmbeddingWriter.write_shard` does for a shard without rows). IndexError for a row out of range."""
    pq = require("pyarrow.parquet", "cli", "An embedding folder's metadata")
    folder = Path(folder)
    if not len(rows):
        delete_shard(folder, shard_id)
        return write_bytes(folder / _EMPTY_DIR / shard_name(shard_id), b"")
    take = np.asarray(rows, dtype=np.int64)
    paths = _shard_paths(folder, shard_id)
    meta = paths.pop("metadata")
    table = pq.read_table(meta)
    if take.min() < 0 or take.max() >= table.num_rows:  # checked before any file changes
        raise IndexError(f"{meta} has {table.num_rows} rows; row {int(take.max())} asked for")
    for path in paths.values():
        if path.is_file():
            write_with(path, save_npy(np.ascontiguousarray(np.load(path)[take])))
    write_with(meta, lambda f: pq.write_table(table.take(take), f))


def merge_shards(folder: str | Path, shard_ids: Sequence[int], target: int) -> None:
    """Write shard ``target`` with the rows of ``shard_ids`` in that order, the stored values copied bit for bit
    (each file atomically, metadata last; metadata columns unified as :func:`read_metadata` does). The sources
    are left as they are: the caller deletes them once the new shard is recorded."""
    pa = require("pyarrow", "cli", "An embedding folder's metadata")
    pq = require("pyarrow.parquet", "cli", "An embedding folder's metadata")
    folder = Path(folder)
    sources = [_shard_paths(folder, s) for s in shard_ids]
    out = _shard_paths(folder, target)
    tables = [pq.read_table(p["metadata"]) for p in sources if p["metadata"].is_file()]
    if not tables:  # only empty shards
        return write_bytes(folder / _EMPTY_DIR / shard_name(target), b"")
    for modality in EMBEDDING_DIRS:
        arrays = [np.load(p[modality]) for p in sources if p[modality].is_file()]
        if arrays:
            write_with(out[modality], save_npy(np.concatenate(arrays)))
    table = pa.concat_tables(tables, promote_options="permissive")
    write_with(out["metadata"], lambda f: pq.write_table(table, f))


@contextmanager
def lock(folder: str | Path) -> Iterator[None]:
    """Hold the folder's writer lock (``fcntl.flock`` on ``DIR/altclip.lock``) for the block: one run writes a
    folder at a time. OSError naming the folder when another process holds it. The lock file stays, empty."""
    path = Path(folder) / LOCK_FILE
    with open(path, "a") as handle:  # creates it empty; nothing is ever written to it
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OSError(
                f"{folder} is being written by another process (it holds {path}): wait for that run to end"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
