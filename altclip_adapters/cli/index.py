"""``altclip index DIR``: FAISS indexes for the image and text embeddings of an embedding folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from altclip_adapters.cli._common import CLIError, command_parser, warn


def memory_size(text: str) -> str:
    """argparse type: a memory size such as 4G or 512M (checked, kept as written)."""
    from altclip_adapters.collection.index_rules import parse_memory  # standard library only

    try:
        parse_memory(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def recall(text: str) -> float:
    """argparse type: a recall in (0, 1]."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1]; got {value}")
    return value


def run(args: argparse.Namespace) -> None:
    folder = Path(args.folder)
    if folder.is_file():
        raise CLIError(
            f"{folder} is a single-file output of altclip embed (--out x.npy / x.parquet): search it as it is "
            f"(altclip search {folder} QUERY, exact), or embed into a folder (altclip embed INPUTS --out DIR) to index it"
        )
    if not folder.is_dir():
        raise FileNotFoundError(f"no such embedding folder: {folder}")
    try:
        from altclip_adapters.collection.index import build_index

        infos = build_index(
            folder,
            modality=args.modality,
            max_index_memory_usage=args.max_index_memory_usage,
            current_memory_available=args.current_memory_available,
            index_key=args.index_key,
            target_recall=args.target_recall,
            rebuild=args.rebuild,
        )
    except ImportError as e:
        raise CLIError(f"altclip index needs faiss ({e.name} is missing): pip install 'altclip-adapters[index]'") from None
    for modality, info in infos.items():
        param = f" ({info['index_param']})" if info["index_param"] else ""
        tuned = info["recall_at_k"]
        measured = (f", recall@{tuned['k']} {tuned['recall']:.3f} on {tuned['queries']} held-out rows"
                    if tuned["recall"] is not None else "")
        print(f"{modality}: {info['action']}: {info['index_key']}{param} over {info['count']:,} {info['dim']}-d vectors"
              f"{measured}, {info['size_bytes'] / 2**20:,.1f} MiB, {info['build_seconds']:.1f} s -> {folder / info['index_path']}")
        if info.get("note") and info["action"].startswith("built"):
            warn(f"{modality}: {info['note']}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    index = command_parser(
        sub, "index", "build FAISS indexes for the embeddings of a folder written by altclip embed --out DIR",
        [
            "altclip index photos-emb",
            "altclip index laion-emb --max-index-memory-usage 16G",
        ],
    )
    index.epilog += (
        "\n\nWrites DIR/image.index and DIR/text.index (+ image.json, text.json: the choice, its tuning, measured\n"
        "recall and the shards it holds). FAISS ids are shard << 32 | row in shard, so updates never renumber\n"
        "(clip-retrieval's back end, which reads ids as row numbers, cannot serve them). The rules are autofaiss's:\n"
        "exact below 1,000 vectors, HNSW while its graph fits the memory budget, then IVF, then OPQ/IVF/PQ;\n"
        "efSearch or nprobe is the smallest reaching the target recall@10 on held-out rows (ties counted); when an\n"
        "HNSW graph cannot reach it (identical vectors), an IVF index is tried and the better kept, with one line.\n"
        "Run again after altclip embed updated DIR: the rows of new shards are added and those of changed or\n"
        "removed shards removed without retraining; it is rebuilt when the rows grew past 2x (or fell below half)\n"
        "of those it was built on, the rules choose another index, or the index kind cannot remove rows (HNSW).\n"
        "altclip search DIR and altclip serve DIR use the indexes: rows an index does not hold (yet) are searched\n"
        "exactly and merged, and an index that is foreign or unreadable is not used (one warning each)."
    )
    index.add_argument("folder", metavar="DIR", help="an embedding folder (img_emb/, text_emb/, metadata/, altclip.json)")
    index.add_argument("--max-index-memory-usage", type=memory_size, default="4G", metavar="SIZE",
                       help="RAM the index may take (chooses the index type: K, M, G, T are binary units)")
    index.add_argument("--current-memory-available", type=memory_size, default="16G", metavar="SIZE",
                       help="RAM available while building (bounds the IVF training sample)")
    index.add_argument("--modality", choices=("image", "text"),
                       help="index only the image or only the text embeddings (default: every one DIR holds)")
    index.add_argument("--index-key", metavar="KEY",
                       help="a FAISS index_factory key, e.g. HNSW32 or IVF4096,Flat, instead of the rules "
                            "(default: chosen by size and --max-index-memory-usage)")
    index.add_argument("--target-recall", type=recall, default=0.95, metavar="R",
                       help="recall@10 the search parameter is tuned to reach")
    index.add_argument("--rebuild", action="store_true", help="build from scratch even when the index could be updated")
    index.set_defaults(func=run)
