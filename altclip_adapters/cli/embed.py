"""``altclip embed``: embed images (files, folders) or texts (.txt files) into one index file or an embedding folder,
incrementally and resumably (one mechanism for both: :func:`altclip_adapters.collection.run.embed_folder`)."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from altclip_adapters.cli import _folder
from altclip_adapters.cli._common import CLIError, command_parser, image_options, model_options

OUTPUT_SUFFIXES = (".npy", ".parquet")


def state_folder(out: Path) -> Path:
    """Where a single-file run keeps its state: the hidden embedding folder ``.NAME.altclip`` beside ``out``."""
    return out.with_name(f".{out.name}.altclip")


def _state_token(folder: Path, modality: str) -> str:
    """A hash of the state folder's shard fingerprints: what the output file was made from."""
    from altclip_adapters.collection.store import shards

    text = "\n".join(f"{s.shard_id}:{s.fingerprint}" for s in shards(folder, modality))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _up_to_date(out: Path, token: str) -> bool:
    from altclip_adapters.collection.files import read_embedding_file

    try:
        return read_embedding_file(out)[2].get("state") == token
    except (OSError, ValueError, KeyError):
        return False


def run(args: argparse.Namespace) -> None:
    """One mechanism for every output: a ``.npy`` / ``.parquet`` OUT is a folder run
    (:func:`altclip_adapters.collection.run.embed_folder`: incremental, resumable, locked) into the hidden folder
    :func:`state_folder`, whose rows are then written to OUT in input order, atomically."""
    import numpy as np

    from altclip_adapters.collection.files import write_embedding_file
    from altclip_adapters.collection.plan import NOUNS, rows_by_key
    from altclip_adapters.collection.store import EMBEDDING_DIRS, shard_name

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
    state = state_folder(out)
    outcome = _folder.embed(args, state, store_dtype="float32", name=f"{state} (the state of {out.name})")
    modality = outcome.embedded[0]
    kind = outcome.inputs.kind
    where = rows_by_key(state)
    found = [i for i, key in enumerate(outcome.inputs.keys) if key in where]
    if not found:
        raise CLIError(f"none of the {len(outcome.inputs.keys)} {NOUNS[kind]} could be read; nothing written")
    token = _state_token(state, modality)
    if not outcome.plan.changes and _up_to_date(out, token):
        print(f"nothing to do: {out} is up to date")
        return _folder.check_outcome(outcome)
    prefix = EMBEDDING_DIRS[modality]
    arrays = {s: np.load(state / prefix / f"{prefix}_{shard_name(s)}.npy") for s in {where[k][0] for k in where}}
    embeddings = np.stack([arrays[where[outcome.inputs.keys[i]][0]][where[outcome.inputs.keys[i]][1]] for i in found])
    meta = {"model": outcome.model, "modality": modality, "state": token}
    write_embedding_file(out, [outcome.inputs.items[i] for i in found], embeddings, meta)
    notes = []
    if skipped := len(outcome.inputs.keys) - len(found):
        notes.append(f"{_folder.count(skipped, 'unreadable image')} skipped (listed above or in an earlier run)")
    if kind == "texts" and (blank := _folder.blank_lines(args.paths)):
        notes.append(f"{_folder.count(blank, 'blank line')} skipped")
    print(f"wrote {len(found):,} {modality} embeddings to {out}" + "".join(f"; {note}" for note in notes))
    _folder.check_outcome(outcome)


def add_parser(sub: argparse._SubParsersAction) -> None:
    embed = command_parser(
        sub, "embed", "embed images (files, folders, shards) or texts (.txt files, one text per line) into an index file or folder",
        [
            "altclip embed photos/ more/cat.jpg --out photos.parquet    # images, folders searched recursively",
            "altclip embed captions.txt --out captions.npy --model AltCLIP-m18    # writes captions.ids.json too",
        ],
    )
    embed.epilog += (
        "\n\nEvery run is incremental and resumable: a rerun embeds only new and changed items (a file's path, size and "
        "modification time), drops removed ones, and reuses the batches a stopped run (Ctrl-C, SIGTERM) finished. A .npy "
        "or .parquet OUT keeps that state in the hidden folder .OUT.altclip beside it (delete it to start over).\n"
        "Unreadable images and blank lines are skipped, and the summary counts them."
    )
    embed.add_argument("paths", nargs="+", metavar="PATH",
                       help="image files and folders (searched recursively), .txt files (one text per line), or webdataset "
                       ".tar / img2dataset .parquet shards (brace ranges allowed; with a folder --out)")
    embed.add_argument("--out", required=True,
                       help="FILE.npy (float32 [N, D], ids in FILE.ids.json), FILE.parquet (columns id, embedding), or DIR "
                       "(no suffix: an embedding folder in clip-retrieval's layout)")
    embed.add_argument("--quiet", action="store_true", help="no progress bar")
    model_options(embed, default=None, recorded="the model OUT records, else AltCLIP")
    image_options(embed)
    _folder.add_arguments(embed)
    embed.set_defaults(func=run)
