"""``altclip search``: the items of an index nearest to a text query in any language."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import CLIError, load_embedder, model_options
from .embed import read_index


def run(args: argparse.Namespace) -> None:
    import numpy as np

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


def add_parser(sub: argparse._SubParsersAction) -> None:
    search = sub.add_parser("search", help="the k index items nearest to a text query in any language")
    search.add_argument("index", help="a .npy or .parquet written by altclip embed")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=10)
    model_options(search, default=None)
    search.set_defaults(func=run)
