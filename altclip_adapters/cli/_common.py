"""What every ``altclip`` command shares: errors, warnings, help formatting, options, loading the embedder.

Imports nothing heavy at module level: ``altclip --help``, argument errors and path checks must not pay for
torch or transformers (tests/test_cli_newcomer.py holds this).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from altclip_adapters.model import registry

if TYPE_CHECKING:
    from altclip_adapters.inference.embedder import Embedder

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class CLIError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, carrying what was kept; ``main`` prints the message as one line and exits with status 130."""


def warn(message: str) -> None:
    print(f"altclip: {message}", file=sys.stderr, flush=True)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and example epilogs as written; an option's default is appended to its help unless the
    help already states it (flags that are off by default and required options state none)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def command_parser(sub: argparse._SubParsersAction, name: str, summary: str, examples: list[str]) -> argparse.ArgumentParser:
    """A subcommand's parser: ``summary`` in ``altclip --help`` and atop its own help, ``examples`` at its end."""
    return sub.add_parser(
        name,
        help=summary,
        description=summary[:1].upper() + summary[1:] + ".",
        epilog="examples:\n" + "\n".join(f"  {example}" for example in examples),
        formatter_class=HelpFormatter,
    )


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1; got {value}")
    return value


def natural_int(text: str) -> int:
    """argparse type: an integer of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0; got {value}")
    return value


def model_options(
    p: argparse.ArgumentParser,
    default: str | None = "AltCLIP",
    bulk: bool = True,
    recorded: str = "the model the index records",
) -> None:
    """The options that choose and prepare the model (``Embedder``'s arguments); ``bulk`` adds those that only
    pay off over many inputs (int8, compile, batch size). Without a ``default``, ``recorded`` says which model
    the command takes."""
    model_help = f"registry name ({', '.join(registry.names())}), hub id or checkpoint folder"
    p.add_argument("--model", default=default, metavar="NAME_OR_FOLDER",
                   help=model_help if default else f"{model_help} (default: {recorded})")
    p.add_argument("--device", help="cuda, cuda:1, cpu, ... (default: cuda when available, else cpu)")
    p.add_argument("--dtype", choices=list(DTYPES), help="weights and activations (default: bf16 on cuda, fp32 on cpu)")
    p.add_argument("--runtime", choices=["auto", "torch", "openvino"],
                   help="what runs the towers: openvino (CPU, extra 'openvino'), torch, or auto: OpenVINO at bf16 on a "
                        "CPU with bf16 when installed and no dtype, int8 or compile option is given, else torch (default: "
                        "$ALTCLIP_RUNTIME, else auto)")
    if bulk:
        p.add_argument("--int8", action="store_true", help="int8 weights (CPU): NNCF weight compression with OpenVINO, torch's dynamic "
                       "int8 Linear layers with --runtime torch")
        p.add_argument("--compile", action="store_true", help="torch.compile the towers (pays off over many batches)")
        p.add_argument("--compile-mode", help="a torch.compile mode, e.g. reduce-overhead (CUDA graphs); implies "
                       "--compile (default: torch.compile's default mode)")
        p.add_argument("--batch-size", type=positive_int, default=256, help="texts or images per forward pass")


def image_options(p: argparse.ArgumentParser) -> None:
    """The options that decode images (commands that read image files)."""
    p.add_argument("--decode-on-device", action="store_true", help="decode JPEG files on the device (nvJPEG on a GPU)")
    p.add_argument("--workers", type=natural_int,
                   help="image decoding worker processes (default: one per CPU core up to 16 on cuda, 0 on cpu)")
    from altclip_adapters.model.images import DEFAULT_MAX_IMAGE_PIXELS  # PIL only: no numpy, no torch

    p.add_argument("--max-image-pixels", type=pixel_limit, default=DEFAULT_MAX_IMAGE_PIXELS, metavar="N",
                   help="images with more pixels (width x height) are reported unreadable and skipped, before "
                        f"decoding; 'none': no limit (default: {DEFAULT_MAX_IMAGE_PIXELS:,}, where PIL refuses)")


def pixel_limit(text: str) -> int | None:
    """argparse type: a positive number of pixels, or ``none`` for no limit."""
    return None if text.strip().lower() == "none" else positive_int(text)


def check_model(model: str) -> None:
    """Fail now, before anything heavy is imported, when ``model`` is neither a checkpoint folder nor a registry
    name nor a hub id (the same rule as ``AltCLIP.from_pretrained``)."""
    from altclip_adapters.model.files import checkpoint_source

    checkpoint_source(model)


def embedder_options(args: argparse.Namespace) -> dict:
    """``Embedder``'s keyword arguments from the command's options (options a command lacks take Embedder's
    defaults); also what Ray actors receive (``altclip embed --ray``). Imports torch only for ``--dtype`` (an
    ``altclip embed`` with nothing to do loads no torch)."""
    options = {
        "device": args.device,
        "dtype": None,
        "int8": getattr(args, "int8", False),
        "compile": getattr(args, "compile_mode", None) or getattr(args, "compile", False),
        "decode_on_device": getattr(args, "decode_on_device", False),
        "num_workers": getattr(args, "workers", None),
        "runtime": getattr(args, "runtime", None),
    }
    if args.dtype:
        import torch

        options["dtype"] = getattr(torch, DTYPES[args.dtype])
    if hasattr(args, "batch_size"):
        options["batch_size"] = args.batch_size
    if hasattr(args, "max_image_pixels"):
        options["max_image_pixels"] = args.max_image_pixels
    return options


def load_embedder(model: str, args: argparse.Namespace) -> Embedder:
    """The ``Embedder`` the command's options describe (see :func:`embedder_options`)."""
    from altclip_adapters.inference.embedder import Embedder

    return Embedder.from_pretrained(model, **embedder_options(args))
