"""The index files of an embedding folder and their manifest: ``DIR/image.index`` and ``DIR/text.index`` (FAISS),
each with ``DIR/image.json`` / ``DIR/text.json`` describing it, the names and place clip-retrieval uses
(``clip_retrieval/clip_index.py``); their FAISS ids; and reading them back, checked against the folder.

An index is tied to the shards it was built from (``store.shards``: a shard is the unit of change of an
embedding folder). FAISS ids are ``shard_id << 32 | row_in_shard`` (``add_with_ids``; an ``IndexIDMap``
around the kinds that keep no ids), so adding or removing a shard never renumbers the others; the json
records, per shard, the stat fingerprint and row count the index holds, and the model. (clip-retrieval's
back end reads ids as row numbers, so it cannot serve these indexes: the price of updates.) :func:`load_index`
refuses an index that is foreign or unreadable and :func:`diff_shards` compares its record with the folder:
:mod:`altclip_adapters.collection.index` updates the index by that difference,
:mod:`altclip_adapters.collection.search` searches around it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from altclip_adapters.atomic import atomic_path, write_json
from altclip_adapters.collection.store import (
    EMBEDDING_DIRS,
    ShardFiles,
    _stat_token,
    check_modality,
    folder_modalities,
    read_manifest,
    shards,
)
from altclip_adapters.extras import require

if TYPE_CHECKING:
    import faiss

METRICS = ("ip", "l2")  # FAISS's inner product (cosine on the unit rows) and squared L2 distance
ID_SHIFT = 32  # the FAISS id of a row: shard_id << ID_SHIFT | row within its shard
INFO_FORMAT = 2  # DIR/<modality>.json records the shards (fingerprint, rows) the index holds


def index_path(folder: str | Path, modality: str) -> Path:
    """``DIR/image.index`` or ``DIR/text.index`` (clip-retrieval's names)."""
    return Path(folder) / f"{check_modality(modality)}.index"


def info_path(folder: str | Path, modality: str) -> Path:
    """``DIR/image.json`` or ``DIR/text.json``: how the index was chosen, tuned and measured."""
    return index_path(folder, modality).with_suffix(".json")


def faiss_message(error: Exception) -> str:
    """FAISS's exception text without its C++ location prefix (``Error in ... at file.cpp:66: Error: '...' failed:``)."""
    text = " ".join(str(error).split())
    return re.sub(r"^Error in .*? at \S+:\d+: (Error: '.*?' failed: )?", "", text)


def row_ids(shard_id: int, rows: int) -> np.ndarray:
    """FAISS ids (int64 [rows]) of the rows of shard ``shard_id``: ``shard_id << 32 | row_in_shard``."""
    return (np.int64(shard_id) << ID_SHIFT) | np.arange(rows, dtype=np.int64)


def current_shards(folder: str | Path, modality: str) -> list[ShardFiles]:
    """The complete shards of ``modality`` (``store.shards``); ``[]`` when the folder holds that modality
    but no row of it (every shard was empty). FileNotFoundError when it does not hold ``modality``."""
    folder = Path(folder)
    held = folder_modalities(folder)
    if modality not in held:
        raise FileNotFoundError(
            f"{folder} has no {modality} embeddings"
            + (f"; it holds {' and '.join(held)} embeddings" if held else " (no img_emb/*.npy or text_emb/*.npy)")
        )
    if not any((folder / EMBEDDING_DIRS[modality]).glob("*.npy")):
        return []
    return shards(folder, modality)


def save_index(folder: Path, modality: str, index: faiss.Index, info: dict[str, Any]) -> dict[str, Any]:
    """Write the index, then its json (which records the index file's size and mtime, so an index file
    replaced or copied without its json is not trusted)."""
    faiss = require("faiss", "index", "FAISS indexes")
    path = index_path(folder, modality)
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    info = {**info, "size_bytes": path.stat().st_size, "index_path": path.name, "index_file": _stat_token(path)}
    write_json(info_path(folder, modality), info)
    return info


class UnusableIndex(Exception):
    """An index that cannot be trusted for this folder: corrupt, foreign, or from an older format."""


def folder_model(folder: Path) -> str | None:
    """The model ``altclip.json`` records; None for a folder without one (written by clip-retrieval)."""
    return read_manifest(folder).get("model") if (folder / "altclip.json").is_file() else None


def load_index(folder: Path, modality: str, *, model: str | None, dim: int) -> tuple[dict[str, Any], faiss.Index]:
    """(json, index) of ``modality``'s index, its search parameter set. Raises UnusableIndex naming why it cannot
    serve this folder (``model``, ``dim``: the folder's), ImportError without faiss."""
    path, meta = index_path(folder, modality), info_path(folder, modality)
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, UnicodeError, ValueError) as e:
        raise UnusableIndex(f"{meta} cannot be read ({e})") from None
    if not isinstance(info, dict) or info.get("format") != INFO_FORMAT or not isinstance(info.get("shards"), dict):
        raise UnusableIndex(f"{meta} records no shards (an index from an older altclip-adapters or another tool)")
    if info.get("metric") not in METRICS or not isinstance(info.get("index_param", ""), str) or not all(
        sid.isdigit() and isinstance(rec, dict) and type(rec.get("rows")) is int and isinstance(rec.get("fingerprint"), str)
        for sid, rec in info["shards"].items()
    ):
        raise UnusableIndex(f"{meta} is damaged (a metric, search parameter or shard record of the wrong form)")
    if info.get("model") != model or info.get("dim") != dim:
        raise UnusableIndex(f"{path} was built from {info.get('dim')}-d embeddings of {info.get('model')}, "
                            f"not this folder's {dim}-d embeddings of {model}")
    if not path.is_file() or info.get("index_file") != _stat_token(path):
        raise UnusableIndex(f"{path} is not the file {meta.name} describes (replaced, truncated or copied since)")
    faiss = require("faiss", "index", "FAISS indexes")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as e:
        raise UnusableIndex(f"{path} cannot be read by FAISS ({faiss_message(e)})") from None
    held = sum(r["rows"] for r in info["shards"].values())
    if index.d != dim or index.ntotal != held:
        raise UnusableIndex(f"{path} holds {index.ntotal} {index.d}-d vectors; {meta.name} says {held} {dim}-d ones")
    try:
        if info.get("index_param"):
            faiss.ParameterSpace().set_index_parameters(index, info["index_param"])
    except RuntimeError as e:
        raise UnusableIndex(f"{meta} names a search parameter FAISS refuses ({faiss_message(e)})") from None
    return info, index


@dataclass(frozen=True)
class ShardDiff:
    """How the shards an index holds compare with the folder's: ``held`` (same fingerprint), ``dropped``
    (changed or removed since: their ids must go), ``missing`` (new or changed: not in the index)."""

    held: list[int]
    dropped: list[int]
    missing: list[ShardFiles]


def diff_shards(info: dict[str, Any], current: list[ShardFiles]) -> ShardDiff:
    """How the shards recorded in an index's json ``info`` compare with the folder's ``current`` shards."""
    now = {s.shard_id: s for s in current}
    recorded = {int(sid): rec for sid, rec in info["shards"].items()}
    held = sorted(sid for sid, rec in recorded.items() if sid in now and now[sid].fingerprint == rec.get("fingerprint"))
    return ShardDiff(held, sorted(recorded.keys() - set(held)), [s for s in current if s.shard_id not in set(held)])
