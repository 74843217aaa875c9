"""``altclip index DIR``: FAISS indexes for the image and text embeddings of an embedding folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import CLIError, command_parser


def memory_size(text: str) -> str:
    """argparse type: a memory size such as 4G or 512M (checked, kept as written)."""
    from ..index import parse_memory  # numpy only

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
    if not folder.is_dir():
        raise FileNotFoundError(f"no such embedding folder: {folder}")
    try:
        from ..index import build_index

        infos = build_index(
            folder,
            modality=args.modality,
            max_index_memory_usage=args.max_index_memory_usage,
            current_memory_available=args.current_memory_available,
            index_key=args.index_key,
            target_recall=args.target_recall,
        )
    except ImportError as e:
        raise CLIError(f"altclip index needs faiss ({e.name} is missing): pip install 'altclip-adapters[index]'") from None
    for modality, info in infos.items():
        param = f" ({info['index_param']})" if info["index_param"] else ""
        tuned = info["recall_at_k"]
        measured = f", recall@{tuned['k']} {tuned['recall']:.3f} on {tuned['queries']} held-out rows" if tuned["queries"] else ""
        print(f"{modality}: {info['index_key']}{param} over {info['count']:,} {info['dim']}-d vectors{measured}, "
              f"{info['size_bytes'] / 2**20:,.1f} MiB, built in {info['build_seconds']:.1f} s -> {folder / info['index_path']}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    index = command_parser(
        sub, "index", "build FAISS indexes for the embeddings of a folder written by altclip embed --out DIR",
        [
            "altclip index photos-emb",
            "altclip index laion-emb --max-index-memory-usage 16G",
        ],
    )
    index.epilog += (
        "\n\nWrites DIR/image.index and DIR/text.index (+ image.json, text.json: the choice, its tuning and\n"
        "measured recall), where clip-retrieval's back end also finds them. The index follows autofaiss's rules:\n"
        "exact below 1,000 vectors, HNSW while its graph fits the memory budget, then IVF, then OPQ/IVF/PQ;\n"
        "efSearch or nprobe is the smallest reaching the target recall@10 on held-out rows.\n"
        "altclip search DIR uses the indexes (exact search over the stored embeddings when none is built)."
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
    index.set_defaults(func=run)
