"""What every ``altclip`` command shares: the error type, warnings, model options, loading the embedder.

Imports nothing heavy at module level: ``altclip --help`` must not pay for torch or transformers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .. import registry

if TYPE_CHECKING:
    from ..pipeline import Embedder

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class CLIError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


def warn(message: str) -> None:
    print(f"altclip: {message}", file=sys.stderr, flush=True)


def model_options(p: argparse.ArgumentParser, default: str | None = "AltCLIP") -> None:
    """The options that choose and prepare the model (``Embedder``'s arguments)."""
    p.add_argument("--model", default=default, help=f"registry name ({', '.join(registry.names())}), hub id or local folder")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", choices=list(DTYPES), help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--int8", action="store_true", help="int8 dynamic quantisation (CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the towers")
    p.add_argument("--compile-mode", help="a torch.compile mode, e.g. reduce-overhead (CUDA graphs); implies --compile")
    p.add_argument("--batch-size", type=int, default=256)


def image_options(p: argparse.ArgumentParser) -> None:
    """The options that decode images (commands that read image files)."""
    p.add_argument("--decode-on-device", action="store_true", help="decode JPEG files on the device (nvJPEG on a GPU)")
    p.add_argument("--workers", type=int, help="image decoding workers (default: up to 16 on cuda, 0 on cpu)")


def load_embedder(model: str, args: argparse.Namespace) -> Embedder:
    import torch

    from ..pipeline import Embedder

    return Embedder.from_pretrained(
        model,
        device=args.device,
        dtype=getattr(torch, DTYPES[args.dtype]) if args.dtype else None,
        int8=args.int8,
        compile=args.compile_mode or args.compile,
        decode_on_device=getattr(args, "decode_on_device", False),
        batch_size=args.batch_size,
        num_workers=getattr(args, "workers", None),
    )


def model_reference(model: str) -> str:
    """What an index records as its model: a registry name / hub id as given, a local folder absolute."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model
