"""The ``altclip`` command: demo, embed, search, convert."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from . import registry

if TYPE_CHECKING:
    from .pipeline import Embedder

OUTPUT_SUFFIXES = (".npy", ".parquet")
FLUSH_ITEMS, FLUSH_SECONDS = 4096, 60.0  # a partial run keeps at most this much unsaved work
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class CLIError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


def warn(message: str) -> None:
    print(f"altclip: {message}", file=sys.stderr, flush=True)


# model ---------------------------------------------------------------------------------------------
def load_embedder(model: str, args: argparse.Namespace) -> Embedder:
    import torch

    from .pipeline import Embedder

    return Embedder.from_pretrained(
        model,
        device=args.device,
        dtype=getattr(torch, DTYPES[args.dtype]) if args.dtype else None,
        int8=args.int8,
        compile=args.compile_mode or args.compile,
        decode_on_device=args.decode_on_device,
        batch_size=args.batch_size,
        num_workers=args.workers,
    )


def model_reference(model: str) -> str:
    """What an index records as its model: a registry name / hub id as given, a local folder absolute."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


# embed ---------------------------------------------------------------------------------------------
def read_inputs(paths: Sequence[str]) -> tuple[str, list[str], list]:
    """(modality, ids, items): the non-empty lines of .txt files, or the image files among ``paths``."""
    from .pipeline import find_images

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
        out = {}
        for part in sorted(self.folder.glob("part-*.npz")):
            with np.load(part) as data:
                out.update(zip(data["positions"].tolist(), data["embeddings"]))
        return out

    def save(self, positions: list[int], embeddings: list[np.ndarray]) -> None:
        if positions:
            index = len(list(self.folder.glob("part-*.npz")))
            tmp = self.folder / f"tmp-{index:06d}.npz"
            np.savez(tmp, positions=np.asarray(positions, dtype=np.int64), embeddings=np.concatenate(embeddings))
            tmp.rename(self.folder / f"part-{index:06d}.npz")

    def remove(self) -> None:
        shutil.rmtree(self.folder)


def write_index(out: Path, ids: list[str], embeddings: np.ndarray, meta: dict) -> None:
    """``.npy`` (float32 [N, D]) with ``<stem>.ids.json`` beside it, or ``.parquet`` (id, embedding)."""
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


def cmd_embed(args: argparse.Namespace) -> None:
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


# search --------------------------------------------------------------------------------------------
def cmd_search(args: argparse.Namespace) -> None:
    ids, embeddings, meta = read_index(Path(args.index))
    if not args.query.strip():
        raise CLIError("the query is empty")
    if args.k < 1:
        raise CLIError(f"-k must be at least 1; got {args.k}")
    embedder = load_embedder(args.model or meta["model"], args)
    query = embedder.texts([args.query])[0].numpy()
    if query.shape[0] != embeddings.shape[1]:
        raise CLIError(
            f"the index holds {embeddings.shape[1]}-d embeddings but the model makes {query.shape[0]}-d ones; "
            f"use the model that built it ({meta['model']})"
        )
    scores = embeddings @ query
    for rank, i in enumerate(np.argsort(-scores)[: args.k], 1):
        print(f"{rank:>3}  {scores[i]:.4f}  {ids[i]}")


# demo ----------------------------------------------------------------------------------------------
DEMO_LABELS = {
    "en": ["a red circle", "a blue square", "a green triangle"],
    "zh": ["一个红色的圆", "一个蓝色的正方形", "一个绿色的三角形"],
    "ja": ["赤い丸", "青い四角", "緑の三角形"],
}


def demo_images() -> dict[str, Image.Image]:
    """A red circle, a blue square and a green triangle on white, 224x224."""
    from PIL import ImageDraw

    shapes = {}
    for name, draw_shape in (
        ("red circle", lambda d: d.ellipse((40, 40, 184, 184), fill=(220, 30, 30))),
        ("blue square", lambda d: d.rectangle((50, 50, 174, 174), fill=(30, 60, 220))),
        ("green triangle", lambda d: d.polygon([(112, 30), (200, 190), (24, 190)], fill=(30, 170, 50))),
    ):
        image = Image.new("RGB", (224, 224), "white")
        draw_shape(ImageDraw.Draw(image))
        shapes[name] = image
    return shapes


def cmd_demo(args: argparse.Namespace) -> None:
    import torch

    from .bridges.files import resolve_checkpoint
    from .tiny import make_checkpoint

    model, label = args.model, args.model
    with tempfile.TemporaryDirectory() as tmp:
        if not Path(model).expanduser().exists() and registry.find(model) is not None:
            try:
                resolve_checkpoint(model)
            except FileNotFoundError:
                warn(f"{model} weights are not cached and the hub is out of reach; running on a RANDOM tiny checkpoint")
                model, label = str(make_checkpoint(Path(tmp) / "tiny", "tiny")), "random tiny checkpoint (meaningless probabilities)"
        embedder = load_embedder(model, args)
        images = demo_images()
        image_emb = embedder.images(list(images.values()))
        text_emb = {language: embedder.texts(labels) for language, labels in DEMO_LABELS.items()}
        scale = embedder.model.logit_scale.exp().float().item()
        print(f"zero-shot classification with {label}")
        for row, name in enumerate(images):
            print(f"image: {name}")
            for language, labels in DEMO_LABELS.items():
                probs = torch.softmax(scale * text_emb[language] @ image_emb[row], dim=0)
                print(f"  {language}: " + "  ".join(f"{text} {p:.2f}" for text, p in zip(labels, probs.tolist())))


# convert -------------------------------------------------------------------------------------------
LAYOUTS = ("baai", "open_clip", "sentence-transformers")


def layout_of(source: str) -> str:
    """Which layout ``source`` is in: a sentence-transformers folder (modules.json), an open_clip
    folder (open_clip_config.json), an open_clip checkpoint file (e.g. open_clip_train's
    ``epoch_N.pt``), or the BAAI layout (a folder with config.json, a registry name, a hub id)."""
    path = Path(source).expanduser()
    if path.is_file():
        return "open_clip checkpoint"
    if (path / "modules.json").is_file():
        return "sentence-transformers"
    if (path / "open_clip_config.json").is_file():
        return "open_clip"
    if path.exists() and not (path / "config.json").is_file():
        raise CLIError(f"{path} is not a BAAI-layout (config.json), open_clip (open_clip_config.json) or sentence-transformers (modules.json) folder")
    return "baai"


def write_baai(source: str, layout: str, folder: Path, arch: str | None = None) -> None:
    """Write ``source`` (in ``layout``) as a BAAI/AltCLIP-layout folder; an open_clip checkpoint
    file is loaded into the open_clip model ``arch``."""
    if layout == "sentence-transformers":
        from .sentence_transformers import load, save_checkpoint

        save_checkpoint(load(source), folder)
    elif layout.startswith("open_clip"):
        import open_clip

        from .adapters.open_clip import save_hf

        if layout == "open_clip checkpoint" and not arch:
            raise CLIError("an open_clip checkpoint file needs --arch: the open_clip model it was trained as "
                           "(AltCLIP, AltCLIP-m9, AltCLIP-m18 or local-dir:FOLDER)")
        name = arch if layout == "open_clip checkpoint" else f"local-dir:{Path(source).expanduser().resolve()}"
        model = open_clip.create_model(name)
        if layout == "open_clip checkpoint":
            open_clip.load_checkpoint(model, str(source))
        save_hf(model, open_clip.get_tokenizer(name), folder)
    else:
        from .core.model import AltCLIP

        AltCLIP.from_pretrained(source).save_pretrained(folder)


def cmd_convert(args: argparse.Namespace) -> None:
    layout, out = layout_of(args.source), Path(args.out)
    if layout == args.to != "baai":
        raise CLIError(f"{args.source} is already a {layout} folder")
    if args.arch and layout != "open_clip checkpoint":
        raise CLIError("--arch only applies to an open_clip checkpoint file")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CLIError(f"{out} exists and is not an empty folder")
    if args.native and args.to != "sentence-transformers":
        raise CLIError("--native only applies to --to sentence-transformers")
    with tempfile.TemporaryDirectory() as tmp:
        if args.to == "baai":
            write_baai(args.source, layout, out, args.arch)
        else:
            baai = args.source if layout == "baai" else Path(tmp)
            if layout != "baai":
                write_baai(args.source, layout, Path(tmp), args.arch)
            if args.to == "open_clip":
                from .adapters.open_clip import save_for_open_clip

                save_for_open_clip(baai, out)
            elif args.native:
                from .sentence_transformers import export_native

                export_native(baai, out)
            else:
                from .sentence_transformers import load

                load(baai).save(str(out))
    print(f"wrote {args.to} folder {out} from {layout} {args.source}")


# entry point ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="altclip", description="AltCLIP (multilingual CLIP) from the command line")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_options(p: argparse.ArgumentParser, default: str | None = "AltCLIP") -> None:
        p.add_argument("--model", default=default, help=f"registry name ({', '.join(registry.names())}), hub id or local folder")
        p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
        p.add_argument("--dtype", choices=list(DTYPES), help="default: bf16 on cuda, fp32 on cpu")
        p.add_argument("--int8", action="store_true", help="int8 dynamic quantisation (CPU)")
        p.add_argument("--compile", action="store_true", help="torch.compile the towers")
        p.add_argument("--compile-mode", help="a torch.compile mode, e.g. reduce-overhead (CUDA graphs); implies --compile")
        p.add_argument("--decode-on-device", action="store_true", help="decode JPEG files on the device (nvJPEG on a GPU)")
        p.add_argument("--batch-size", type=int, default=256)
        p.add_argument("--workers", type=int, help="image decoding workers (default: up to 16 on cuda, 0 on cpu)")

    demo = sub.add_parser("demo", help="zero-shot probabilities for generated images, labels in English, Chinese, Japanese")
    model_options(demo)
    demo.set_defaults(func=cmd_demo)

    embed = sub.add_parser("embed", help="embed images (files, folders) or texts (.txt, one per line) into an index")
    embed.add_argument("paths", nargs="+", metavar="PATH")
    embed.add_argument("--out", required=True, help="FILE.npy (+ FILE.ids.json) or FILE.parquet")
    embed.add_argument("--quiet", action="store_true", help="no progress bar")
    model_options(embed)
    embed.set_defaults(func=cmd_embed)

    search = sub.add_parser("search", help="the k index items nearest to a text query in any language")
    search.add_argument("index", help="a .npy or .parquet written by altclip embed")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=10)
    model_options(search, default=None)
    search.set_defaults(func=cmd_search)

    convert = sub.add_parser("convert", help="convert between the BAAI layout, open_clip and sentence-transformers folders")
    convert.add_argument("source", help="registry name, hub id, a BAAI-layout, open_clip or sentence-transformers folder, "
                         "or an open_clip checkpoint file (with --arch)")
    convert.add_argument("--arch", help="open_clip model of a checkpoint file: AltCLIP, AltCLIP-m9, AltCLIP-m18 or local-dir:FOLDER")
    convert.add_argument("--to", choices=LAYOUTS, required=True)
    convert.add_argument("--out", required=True, help="the folder to write (new or empty)")
    convert.add_argument("--native", action="store_true", help="sentence-transformers: its own Transformer module, loadable without this package")
    convert.set_defaults(func=cmd_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``altclip`` command; returns the exit status (1: an error, printed as one line)."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (CLIError, OSError, ValueError, KeyError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"altclip: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
