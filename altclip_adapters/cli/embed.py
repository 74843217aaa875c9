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

from . import _folder
from ._common import (
    CLIError,
    Interrupted,
    check_model,
    command_parser,
    image_options,
    load_embedder,
    model_options,
    model_reference,
    warn,
)

OUTPUT_SUFFIXES = (".npy", ".parquet")
FLUSH_ITEMS, FLUSH_SECONDS = 4096, 60.0  # a partial run keeps at most this much unsaved work

if TYPE_CHECKING:
    import numpy as np


def read_inputs(paths: Sequence[str]) -> tuple[str, list[str], list, list[str]]:
    """(modality, ids, items, left out): the non-blank lines of .txt files, or the image files among ``paths``;
    "left out" says what was skipped before embedding, for the summary (e.g. "2 blank lines skipped")."""
    from ..inputs import find_images, read_text_lines

    texts = [Path(p) for p in paths if Path(p).suffix.lower() == ".txt"]
    if texts and len(texts) != len(paths):
        raise CLIError("give either .txt files (one text per line) or images and folders, not both")
    if not texts:
        images = find_images(paths)
        return "image", [str(p) for p in images], images, []
    found = read_text_lines(texts)
    if not found.lines:
        raise CLIError(f"no text lines in {', '.join(map(str, texts))}")
    left_out = [f"{found.blank} blank line{'s' * (found.blank != 1)} skipped"] if found.blank else []
    return "text", found.lines, found.lines, left_out


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
    if _folder.is_folder(out):
        return _folder.run(args, out)
    if out.suffix not in OUTPUT_SUFFIXES:
        raise CLIError(f"--out must end in .npy or .parquet, or name a folder (no suffix); got {out.name}")
    if args.ray is not None:
        raise CLIError("--ray writes an embedding folder: give --out DIR (a name without a suffix)")
    if any(Path(p).suffix.lower() in (".tar", ".parquet") or "{" in p for p in args.paths):
        raise CLIError(".tar and .parquet shards (webdataset, img2dataset) are embedded into a folder: "
                       "give --out DIR (a name without a suffix)")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"the folder for --out does not exist: {out.parent}")
    modality, ids, items, left_out = read_inputs(args.paths)
    check_model(args.model)
    fingerprint = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    meta = {"model": model_reference(args.model), "modality": modality}
    run = PartialRun(out, {**meta, "count": len(ids), "fingerprint": fingerprint})
    done = run.done()
    todo = [i for i in range(len(ids)) if i not in done]
    if done:
        warn(f"resuming: {len(done)} of {len(ids)} embeddings already in {run.folder}")
    skipped = 0
    if todo:
        saved = len(done)
        pending: list[tuple[list[int], np.ndarray]] = []  # one append per batch: a Ctrl-C never splits one

        def flush() -> None:
            nonlocal saved
            batches = pending.copy()
            pending.clear()
            run.save([p for positions, _ in batches for p in positions], [emb for _, emb in batches])
            saved += sum(len(positions) for positions, _ in batches)

        try:
            embedder = load_embedder(args.model, args)
            last = time.monotonic()
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
                    pending.append(([todo[i] for i in indices], embeddings.numpy()))
                    bar.update(len(indices) + len(errors))
                    if sum(len(p) for p, _ in pending) >= FLUSH_ITEMS or time.monotonic() - last > FLUSH_SECONDS:
                        flush()
                        last = time.monotonic()
            flush()
        except KeyboardInterrupt:
            flush()
            raise Interrupted(
                f"interrupted: {saved} of {len(ids)} {modality} embeddings saved in {run.folder}; "
                "run the same command to resume"
            ) from None
        done = run.done()
    if not done:
        run.remove()
        raise CLIError(f"none of the {len(ids)} images could be read; nothing written")
    kept = sorted(done)
    write_index(out, [ids[i] for i in kept], np.stack([done[i] for i in kept]), meta)
    run.remove()
    if skipped:
        left_out.append(f"{skipped} unreadable image{'s' * (skipped != 1)} skipped (listed above)")
    print(f"wrote {len(kept)} {modality} embeddings to {out}" + "".join(f"; {note}" for note in left_out))


def add_parser(sub: argparse._SubParsersAction) -> None:
    embed = command_parser(
        sub, "embed", "embed images (files, folders, shards) or texts (.txt files, one text per line) into an index file or folder",
        [
            "altclip embed photos/ more/cat.jpg --out photos.parquet    # images, folders searched recursively",
            "altclip embed captions.txt --out captions.npy --model AltCLIP-m18    # writes captions.ids.json too",
        ],
    )
    embed.epilog += (
        f"\n\nA .npy or .parquet OUT saves progress in OUT.parts/ every {FLUSH_ITEMS} items or {FLUSH_SECONDS:.0f} s and on "
        "Ctrl-C; a folder OUT, shard by shard: run the same command again to resume.\nUnreadable images and blank lines "
        "are skipped, and the summary counts them."
    )
    embed.add_argument("paths", nargs="+", metavar="PATH",
                       help="image files and folders (searched recursively), .txt files (one text per line), or webdataset "
                       ".tar / img2dataset .parquet shards (brace ranges allowed; with a folder --out)")
    embed.add_argument("--out", required=True,
                       help="FILE.npy (float32 [N, D], ids in FILE.ids.json), FILE.parquet (columns id, embedding), or DIR "
                       "(no suffix: an embedding folder in clip-retrieval's layout)")
    embed.add_argument("--quiet", action="store_true", help="no progress bar")
    model_options(embed)
    image_options(embed)
    _folder.add_arguments(embed)
    embed.set_defaults(func=run)
