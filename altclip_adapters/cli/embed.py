"""``altclip embed``: embed images (files, folders) or texts (.txt files) into one index file, resumably."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ._common import CLIError, image_options, load_embedder, model_options, model_reference, warn

OUTPUT_SUFFIXES = (".npy", ".parquet")
FLUSH_ITEMS, FLUSH_SECONDS = 4096, 60.0  # a partial run keeps at most this much unsaved work

if TYPE_CHECKING:
    import numpy as np


def read_inputs(paths: Sequence[str]) -> tuple[str, list[str], list]:
    """(modality, ids, items): the non-empty lines of .txt files, or the image files among ``paths``."""
    from ..pipeline import find_images

    texts = [Path(p) for p in paths if Path(p).suffix.lower() == ".txt"]
    if texts and len(texts) != len(paths):
        raise CLIError("give either .txt files (one text per line) or images and folders, not both")
    if not texts:
        images = find_images(paths)
        return "image", [str(p) for p in images], images
    lines = []
    for path in texts:
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        try:
            lines += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as e:
            raise CLIError(f"{path} is not UTF-8 text: {e}") from e
    if not lines:
        raise CLIError(f"no text lines in {', '.join(map(str, texts))}")
    return "text", lines, lines


class PartialRun:
    """Saved batches of an unfinished ``embed`` run (``OUT.parts/``), so that a rerun resumes."""

    def __init__(self, out: Path, manifest: dict):
        self.folder = out.with_name(out.name + ".parts")
        self.manifest = manifest
        saved = self.folder / "manifest.json"
        if saved.is_file() and json.loads(saved.read_text()) != manifest:
            raise CLIError(
                f"{self.folder} holds a partial run with other inputs or another model; delete it to start over"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(manifest))

    def done(self) -> dict[int, np.ndarray]:
        """Embedding of each finished position."""
        import numpy as np

        out = {}
        for part in sorted(self.folder.glob("part-*.npz")):
            with np.load(part) as data:
                out.update(zip(data["positions"].tolist(), data["embeddings"]))
        return out

    def save(self, positions: list[int], embeddings: list[np.ndarray]) -> None:
        import numpy as np

        if positions:
            index = len(list(self.folder.glob("part-*.npz")))
            tmp = self.folder / f"tmp-{index:06d}.npz"
            np.savez(tmp, positions=np.asarray(positions, dtype=np.int64), embeddings=np.concatenate(embeddings))
            tmp.rename(self.folder / f"part-{index:06d}.npz")

    def remove(self) -> None:
        shutil.rmtree(self.folder)


def write_index(out: Path, ids: list[str], embeddings: np.ndarray, meta: dict) -> None:
    """``.npy`` (float32 [N, D]) with ``<stem>.ids.json`` beside it, or ``.parquet`` (id, embedding)."""
    import numpy as np

    if out.suffix == ".npy":
        np.save(out, embeddings.astype(np.float32))
        out.with_suffix(".ids.json").write_text(json.dumps({**meta, "ids": ids}, ensure_ascii=False))
        return
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise CLIError("writing .parquet needs pyarrow: pip install 'altclip-adapters[cli]'") from e
    flat = pa.array(embeddings.astype(np.float32).reshape(-1))
    table = pa.table({"id": pa.array(ids, pa.string()), "embedding": pa.FixedSizeListArray.from_arrays(flat, embeddings.shape[1])})
    pq.write_table(table.replace_schema_metadata({"altclip": json.dumps(meta)}), out)


def read_index(path: Path) -> tuple[list[str], np.ndarray, dict]:
    """(ids, embeddings [N, D], metadata) of an index written by ``altclip embed``."""
    import numpy as np

    if not path.is_file():
        raise FileNotFoundError(f"no such index file: {path}")
    if path.suffix == ".npy":
        sidecar = path.with_suffix(".ids.json")
        if not sidecar.is_file():
            raise CLIError(f"{path} has no {sidecar.name} beside it: not an index written by altclip embed")
        meta = json.loads(sidecar.read_text())
        return meta.pop("ids"), np.load(path), meta
    if path.suffix != ".parquet":
        raise CLIError(f"{path}: an index is a .npy or .parquet file written by altclip embed")
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    metadata = table.schema.metadata or {}
    if b"altclip" not in metadata or "embedding" not in table.column_names:
        raise CLIError(f"{path} is not an index written by altclip embed (no altclip metadata)")
    column = table.column("embedding").combine_chunks()
    embeddings = np.asarray(column.flatten()).reshape(len(table), column.type.list_size)
    return table.column("id").to_pylist(), embeddings, json.loads(metadata[b"altclip"])


def run(args: argparse.Namespace) -> None:
    import numpy as np
    from tqdm import tqdm

    out = Path(args.out)
    if out.suffix not in OUTPUT_SUFFIXES:
        raise CLIError(f"--out must end in .npy or .parquet; got {out.name}")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"the folder for --out does not exist: {out.parent}")
    modality, ids, items = read_inputs(args.paths)
    fingerprint = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    meta = {"model": model_reference(args.model), "modality": modality}
    run = PartialRun(out, {**meta, "count": len(ids), "fingerprint": fingerprint})
    done = run.done()
    todo = [i for i in range(len(ids)) if i not in done]
    if done:
        warn(f"resuming: {len(done)} of {len(ids)} embeddings already in {run.folder}")
    skipped = 0
    if todo:
        embedder = load_embedder(args.model, args)
        positions, chunks, last = [], [], time.monotonic()
        unit = "img" if modality == "image" else "text"
        with tqdm(total=len(todo), unit=unit, disable=args.quiet, file=sys.stderr) as bar:
            if modality == "text":
                batches = ((idx, emb, []) for idx, emb in embedder.iter_texts([items[i] for i in todo]))
            else:
                batches = ((b.indices, b.embeddings, b.errors) for b in embedder.iter_images([items[i] for i in todo]))
            for indices, embeddings, errors in batches:
                for _, message in errors:
                    bar.clear()
                    warn(f"skipped unreadable image: {message}")
                skipped += len(errors)
                positions += [todo[i] for i in indices]
                chunks.append(embeddings.numpy())
                bar.update(len(indices) + len(errors))
                if len(positions) >= FLUSH_ITEMS or time.monotonic() - last > FLUSH_SECONDS:
                    run.save(positions, chunks)
                    positions, chunks, last = [], [], time.monotonic()
        run.save(positions, chunks)
        done = run.done()
    if not done:
        run.remove()
        raise CLIError(f"none of the {len(ids)} images could be read; nothing written")
    kept = sorted(done)
    write_index(out, [ids[i] for i in kept], np.stack([done[i] for i in kept]), meta)
    run.remove()
    note = f"; {skipped} unreadable images skipped (listed above)" if skipped else ""
    print(f"wrote {len(kept)} {modality} embeddings to {out}{note}")




def add_parser(sub: argparse._SubParsersAction) -> None:
    embed = sub.add_parser("embed", help="embed images (files, folders) or texts (.txt, one per line) into an index")
    embed.add_argument("paths", nargs="+", metavar="PATH")
    embed.add_argument("--out", required=True, help="FILE.npy (+ FILE.ids.json) or FILE.parquet")
    embed.add_argument("--quiet", action="store_true", help="no progress bar")
    model_options(embed)
    image_options(embed)
    embed.set_defaults(func=run)
