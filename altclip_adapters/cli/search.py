"""``altclip search``: the items of an index nearest to a text query in any language."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import CLIError, check_model, command_parser, load_embedder, model_options, positive_int
from .embed import read_index


def run(args: argparse.Namespace) -> None:
    import numpy as np

    ids, embeddings, meta = read_index(Path(args.index))
    if not args.query.strip():
        raise CLIError("the query is empty")
    if args.k < 1:
        raise CLIError(f"-k must be at least 1; got {args.k}")
    check_model(args.model or meta["model"])
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


def add_parser(sub: argparse._SubParsersAction) -> None:
    search = command_parser(
        sub, "search", "the k index items nearest to a text query in any language",
        [
            'altclip search photos.parquet "一只在沙发上睡觉的猫" -k 5',
            'altclip search captions.npy "a dog playing in the snow" --device cpu',
        ],
    )
    search.epilog += "\n\nPrints one line per hit: rank, cosine similarity, id (the image path or the text line)."
    search.add_argument("index", help="a .npy or .parquet file written by altclip embed")
    search.add_argument("query", help="the text to search for, in any language the model knows")
    search.add_argument("-k", type=positive_int, default=10, help="how many hits to print")
    model_options(search, default=None, bulk=False)
    search.set_defaults(func=run)
