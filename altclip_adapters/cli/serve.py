"""``altclip serve``: an OpenAI-compatible embeddings API, search over an embedding folder, a search page."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import (
    CLIError,
    check_model,
    command_parser,
    load_embedder,
    model_options,
    natural_int,
    pixel_limit,
    positive_int,
    warn,
)


def run(args: argparse.Namespace) -> None:
    folder = Path(args.folder) if args.folder else None
    if folder is not None and not folder.is_dir():
        raise CLIError(f"no such embedding folder: {folder}")
    model = args.model
    if model is None:
        from ..store import read_manifest

        model = read_manifest(folder)["model"] if folder is not None else "AltCLIP"
    check_model(model)
    try:
        import fastapi  # noqa: F401
        import multipart  # noqa: F401  (python-multipart: image uploads)
        import uvicorn
    except ImportError as e:
        raise CLIError(f"altclip serve needs the serve extra ({e.name} is missing): pip install 'altclip-adapters[serve]'") from None

    from ..serve.app import ServeSettings
    from ..serve.server import build_app, is_loopback

    args.workers = 0  # images reach the model decoded and cropped by the request threads: no loader processes
    embedder = load_embedder(model, args)
    settings = ServeSettings(
        model_id=args.served_model_name or model,
        allow_url_fetch=args.allow_url_fetch,
        max_request_bytes=args.max_request_mb * 2**20,
        max_inputs=args.max_inputs,
        max_image_pixels=args.max_image_pixels,
    )
    app = build_app(embedder, settings, folder=folder, image_base=args.image_base, thumbnail_cache=args.thumbnail_cache,
                    max_batch_size=args.max_batch_size, max_wait=args.max_wait_ms / 1000)
    if not is_loopback(args.host):
        warn(f"listening on {args.host}: the server is reachable from the network and has no authentication")
    if args.allow_url_fetch:
        warn("--allow-url-fetch: the server fetches any http(s) image URL a client sends")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = command_parser(
        sub, "serve", "serve an OpenAI-compatible embeddings API and, for an embedding folder, search and a search page",
        [
            "altclip serve --model AltCLIP    # POST /v1/embeddings, GET /v1/models on http://127.0.0.1:8000",
            "altclip serve photos-emb/ --port 8080    # also GET/POST /search and the search page at /",
        ],
    )
    p.epilog += ("\n\nImages go to /v1/embeddings as data: URIs with \"modality\": \"image\" (infinity-emb's convention); "
                 "http(s) URLs only with --allow-url-fetch.")
    p.add_argument("folder", nargs="?", metavar="DIR", help="an embedding folder written by altclip embed / altclip index")
    model_options(p, default=None)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=natural_int, default=8000, help="port to listen on")
    p.add_argument("--served-model-name", help="the model name clients pass (default: --model, or DIR's model)")
    p.add_argument("--allow-url-fetch", action="store_true", help="fetch the http(s) image URLs clients send")
    p.add_argument("--max-request-mb", type=positive_int, default=32, help="larger request bodies get 413")
    p.add_argument("--max-inputs", type=positive_int, default=2048, help="most inputs in one embeddings request (as OpenAI)")
    from ..images import DEFAULT_MAX_IMAGE_PIXELS  # PIL only: no numpy, no torch

    p.add_argument("--max-image-pixels", type=pixel_limit, default=DEFAULT_MAX_IMAGE_PIXELS, metavar="N",
                   help="larger images (width x height) get 400, before decoding; 'none': no limit "
                        f"(default: {DEFAULT_MAX_IMAGE_PIXELS:,}, where PIL refuses)")
    p.add_argument("--max-batch-size", type=positive_int, default=64,
                   help="most items gathered from concurrent requests into one forward pass")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a request waits for others to share its forward pass")
    p.add_argument("--image-base", default=".", help="the folder relative image paths in DIR's metadata are relative to")
    p.add_argument("--thumbnail-cache", help="where thumbnails are kept (default: ~/.cache/altclip-adapters/thumbnails)")
    p.set_defaults(func=run)
