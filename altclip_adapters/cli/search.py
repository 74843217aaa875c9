"""``altclip search``: the items of an index nearest to a text query in any language, or to an image."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from altclip_adapters.cli._common import CLIError, check_model, command_parser, load_embedder, model_options, positive_int, warn

SHOWN_COLUMNS = ("image_path", "url", "key")  # the first present names the hit; a caption follows


def embed_query(args: argparse.Namespace, model: str, dim: int, recorded: str):
    """The query's embedding, float32 [1, dim], from the text or the ``--image`` file (through the Embedder and
    its one image loader); CLIError when the model makes embeddings of another size than the index holds."""
    check_model(model)
    image = None
    if args.image is not None:  # read before the model loads: a bad file fails in a second, not after loading
        from altclip_adapters.model.images import load_image

        image = load_image(args.image)  # the Embedder's default pixel limit
    embedder = load_embedder(model, args)
    query = (embedder.texts([args.query]) if image is None else embedder.images([image])).numpy()
    if query.shape[1] != dim:
        raise CLIError(
            f"the index holds {dim}-d embeddings but the model makes {query.shape[1]}-d ones; "
            f"use the model that built it ({recorded})"
        )
    return query


def describe(metadata: dict[str, Any]) -> str:
    """A hit's metadata on one line: its image path, url or key, then its caption in quotes."""
    name = next((str(metadata[c]) for c in SHOWN_COLUMNS if metadata.get(c) not in (None, "")), "")
    caption = metadata.get("caption")
    text = " ".join(str(caption).split()) if caption not in (None, "") else ""
    if not name and not text:
        return ", ".join(f"{k}={v}" for k, v in metadata.items())
    return f"{name}  \"{text}\"" if name and text else name or f"\"{text}\""


def search_file(args: argparse.Namespace, path: Path) -> None:
    from altclip_adapters.collection.files import read_embedding_file
    from altclip_adapters.collection.search import exact_search

    if args.modality:
        raise CLIError("--modality applies to an embedding folder; a .npy or .parquet index holds one modality")
    ids, embeddings, meta = read_embedding_file(path)
    query = embed_query(args, args.model or meta["model"], embeddings.shape[1], meta["model"])
    scores, rows = exact_search([embeddings], query, min(args.k, len(ids)), unit=True)
    for rank, (score, row) in enumerate(zip(scores[0].tolist(), rows[0].tolist()), 1):
        print(f"{rank:>3}  {score:.4f}  {ids[row]}")


def search_folder(args: argparse.Namespace, folder: Path) -> None:
    from altclip_adapters.collection.search import open_index

    index = open_index(folder, model=args.model, on_warning=warn)
    modality = args.modality or ("image" if "image" in index.modalities else "text")
    if modality not in index.modalities:
        raise CLIError(f"{folder} holds no {modality} embeddings (it holds {' and '.join(index.modalities)})")
    if not index.count(modality):
        raise CLIError(f"{folder} holds no {modality} rows (every shard altclip embed wrote there was empty): nothing to search")
    query = embed_query(args, index.model, index.dim, index.model)
    for hit in index.search(query, args.k, modality=modality)[0]:
        print(f"{hit.rank:>3}  {hit.score:.4f}  {describe(hit.metadata)}")


def run(args: argparse.Namespace) -> None:
    if (args.query is None) == (args.image is None):
        args.usage_error("give a text query or --image FILE (one of them)")  # exits 2, as argparse's own errors
    if args.query is not None and not args.query.strip():
        args.usage_error("the query is empty")
    if args.image is not None and not Path(args.image).is_file():
        raise FileNotFoundError(f"no such image file: {args.image}")
    path = Path(args.index)
    if path.is_dir():
        search_folder(args, path)
    else:
        search_file(args, path)


def add_parser(sub: argparse._SubParsersAction) -> None:
    search = command_parser(
        sub, "search", "the k index items nearest to a text query in any language, or to an image",
        [
            'altclip search photos-emb "一只在沙发上睡觉的猫" -k 5',
            "altclip search photos-emb --image query.jpg --modality text",
            'altclip search captions.npy "a dog playing in the snow" --device cpu',
        ],
    )
    search.epilog += (
        "\n\nPrints one line per hit: rank, cosine similarity, then the item: for an embedding folder its\n"
        "image path, url or key and its caption (from metadata/); for a file its id (image path or text line).\n"
        "A folder is searched with its FAISS index (altclip index DIR), else exactly."
    )
    search.add_argument("index", metavar="INDEX",
                        help="an embedding folder (altclip embed --out DIR), or a .npy / .parquet file written by altclip embed")
    search.add_argument("query", nargs="?", help="the text to search for, in any language the model knows")
    search.add_argument("--image", metavar="FILE", help="search with this image instead of a text (default: none, QUERY is searched)")
    search.add_argument("-k", type=positive_int, default=10, help="how many hits to print")
    search.add_argument("--modality", choices=("image", "text"),
                        help="search a folder's image or text embeddings (default: image when the folder has them)")
    model_options(search, default=None, bulk=False)
    search.set_defaults(func=run, usage_error=search.error)
