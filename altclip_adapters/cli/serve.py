"""``altclip serve``: an OpenAI-compatible embeddings API, search over an embedding folder, a search page."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from altclip_adapters.cli._common import CLIError, check_model, command_parser, load_embedder, model_options, natural_int, pixel_limit, positive_int, warn


def positive_seconds(text: str) -> float:
    """argparse type: a positive number of seconds."""
    value = float(text)
    if not value > 0:
        raise ValueError(text)
    return value


def run(args: argparse.Namespace) -> None:
    folder = Path(args.folder) if args.folder else None
    if folder is not None and not folder.is_dir():
        raise CLIError(f"no such embedding folder: {folder}")
    model = args.model
    if model is None:
        from altclip_adapters.collection.store import read_manifest

        model = read_manifest(folder)["model"] if folder is not None else "AltCLIP"
    check_model(model)
    try:
        import fastapi  # noqa: F401
        import multipart  # noqa: F401  (python-multipart: image uploads)
        import uvicorn
    except ImportError as e:
        raise CLIError(f"altclip serve needs the serve extra ({e.name} is missing): pip install 'altclip-adapters[serve]'") from None
    if not args.no_metrics:
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            from altclip_adapters.serve.metrics import MISSING

            raise CLIError(MISSING) from None

    from altclip_adapters.serve.security import allowed_hosts, read_api_keys
    from altclip_adapters.serve.server import Connections, ServeSettings, build_app, is_loopback, served_model_name, uvicorn_config

    try:
        keys = read_api_keys(args.api_key, args.api_key_file)
    except (OSError, ValueError) as e:
        raise CLIError(f"--api-key-file / --api-key: {e}") from None
    loopback = is_loopback(args.host)
    args.workers = 0  # images reach the model decoded and cropped by the request threads: no loader processes
    embedder = load_embedder(model, args)
    settings = ServeSettings(
        model_id=args.served_model_name or served_model_name(model),
        allow_url_fetch=args.allow_url_fetch,
        max_request_bytes=args.max_request_mb * 2**20,
        body_timeout=args.body_timeout,
        max_inputs=args.max_inputs,
        max_input_chars=args.max_input_chars,
        max_image_pixels=args.max_image_pixels,
        pixel_budget=args.pixel_budget,
        pixel_wait=args.pixel_wait,
        api_keys=keys,
        allowed_hosts=allowed_hosts(args.host, args.allowed_hosts, loopback),
        cors_origins=args.cors_origin,
        metrics=not args.no_metrics,
    )
    app = build_app(embedder, settings, folder=folder, image_base=args.image_base, thumbnail_cache=args.thumbnail_cache,
                    max_batch_size=args.max_batch_size, max_wait=args.max_wait_ms / 1000)
    if not loopback and not keys:
        warn(exposed_warning(args.host))
    if args.allow_url_fetch:
        warn("--allow-url-fetch: the server fetches any http(s) image URL a client sends")
    connections = Connections(header_timeout=args.header_timeout, limit_concurrency=args.limit_concurrency or None)
    # uvicorn stops gracefully on SIGTERM/SIGINT (stop accepting, finish the requests in flight, stop the batch
    # handler), then raises the signal again under the handler it found: this one makes that a clean exit 0
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.Server(uvicorn_config(app, host=args.host, port=args.port, connections=connections)).run()


def exposed_warning(host: str) -> str:
    """What the command prints when it listens beyond loopback without an API key."""
    return (f"WARNING: listening on {host}, reachable from the network, WITHOUT authentication: anyone who can "
            "reach this port can use the model and read the collection; set --api-key-file or ALTCLIP_API_KEY")


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from altclip_adapters.serve.settings import SERVE_MAX_IMAGE_PIXELS, SERVE_PIXEL_BUDGET, Connections

    p = command_parser(
        sub, "serve", "serve an OpenAI-compatible embeddings API and, for an embedding folder, search and a search page",
        [
            "altclip serve --model AltCLIP    # POST /v1/embeddings, GET /v1/models on http://127.0.0.1:8000",
            "altclip serve photos-emb/ --port 8080    # also GET/POST /search and the search page at /",
            "ALTCLIP_API_KEY=... altclip serve photos-emb/ --host 0.0.0.0 --allowed-hosts search.example.org",
        ],
    )
    p.epilog += ("\n\nImages go to /v1/embeddings as data: URIs with \"modality\": \"image\" (infinity-emb's convention); "
                 "http(s) URLs only with --allow-url-fetch. Safe by default: loopback only, Host names checked, no CORS, "
                 "pixel and body limits, header and body timeouts; GET /health, /ready, /metrics, POST /admin/reload.")
    p.add_argument("folder", nargs="?", metavar="DIR", help="an embedding folder written by altclip embed / altclip index")
    model_options(p, default=None)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=natural_int, default=8000, help="port to listen on")
    p.add_argument("--served-model-name", help="the model name clients pass (default: the registry name, or the "
                                                "model folder's name)")
    auth = p.add_argument_group("access")
    auth.add_argument("--api-key", action="append", default=[], metavar="KEY",
                      help="accept 'Authorization: Bearer KEY' (repeatable; prefer --api-key-file or the environment "
                           "variable ALTCLIP_API_KEY: argv is visible to other users); without any key there is no auth")
    auth.add_argument("--api-key-file", metavar="FILE", help="accepted keys, one per line (default: none; keys in a file stay out of `ps`)")
    auth.add_argument("--allowed-hosts", action="append", default=[], metavar="NAME",
                      help="also accept this Host header name (repeatable; on loopback only loopback names are accepted, "
                           "elsewhere any unless this is given)")
    auth.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                      help="allow browser requests from this origin (repeatable; default: CORS off)")
    auth.add_argument("--no-metrics", action="store_true", help="do not serve GET /metrics (Prometheus)")
    limits = p.add_argument_group("limits")
    limits.add_argument("--allow-url-fetch", action="store_true", help="fetch the http(s) image URLs clients send")
    limits.add_argument("--max-request-mb", type=positive_int, default=32, help="larger request bodies get 413")
    limits.add_argument("--body-timeout", type=positive_seconds, default=30.0, metavar="S",
                        help="a request body must arrive within S seconds, else 408 (default: 30)")
    limits.add_argument("--header-timeout", type=positive_seconds, default=Connections.header_timeout, metavar="S",
                        help=f"a connection must send its request headers within S seconds, else it is closed "
                             f"(default: {Connections.header_timeout:g})")
    limits.add_argument("--limit-concurrency", type=natural_int, default=Connections.limit_concurrency, metavar="N",
                        help=f"most connections and requests at once, more get 503; 0: no cap "
                             f"(default: {Connections.limit_concurrency})")
    limits.add_argument("--max-inputs", type=positive_int, default=2048, help="most inputs in one embeddings request (as OpenAI)")
    limits.add_argument("--max-input-chars", type=positive_int, default=32_768, metavar="N",
                        help="longest text input in characters, longer ones get 400 (default: 32,768)")
    limits.add_argument("--max-image-pixels", type=pixel_limit, default=SERVE_MAX_IMAGE_PIXELS, metavar="N",
                        help="larger images (width x height) get 400, before decoding; 'none': no limit "
                             f"(default: {SERVE_MAX_IMAGE_PIXELS:,}, for a public endpoint; the other commands use PIL's 178,956,970)")
    limits.add_argument("--pixel-budget", type=positive_int, default=SERVE_PIXEL_BUDGET, metavar="N",
                        help="decoded image pixels in flight across all requests; more wait (see --pixel-wait) "
                             f"(default: {SERVE_PIXEL_BUDGET:,}, about {SERVE_PIXEL_BUDGET * 3 // 10**6} MB of RGB)")
    limits.add_argument("--pixel-wait", type=positive_seconds, default=30.0, metavar="S",
                        help="how long an image waits for room in the pixel budget before its request gets 503 (default: 30)")
    p.add_argument("--max-batch-size", type=positive_int, default=64,
                   help="most items gathered from concurrent requests into one forward pass")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a request waits for others to share its forward pass")
    p.add_argument("--image-base", default=".",
                   help="the servable root: relative image paths in DIR's metadata are read from it, and no file outside "
                        "it is ever served (default: the current folder)")
    p.add_argument("--thumbnail-cache", help="where thumbnails are kept (default: ~/.cache/altclip-adapters/thumbnails)")
    p.set_defaults(func=run)
