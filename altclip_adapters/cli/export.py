"""``altclip export``: both towers as ONNX or OpenVINO graphs, with tokenizer, preprocessing and a JSON manifest."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from altclip_adapters.cli._common import CLIError, check_model, command_parser, warn


def run(args: argparse.Namespace) -> None:
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise CLIError(f"--out {out} is not empty: pass --overwrite to write into it")
    if args.int8 and args.to != "openvino":
        raise CLIError("--int8 is OpenVINO's (NNCF int8 weights): use --to openvino")
    check_model(args.model)
    from altclip_adapters.model.core import AltCLIP
    from altclip_adapters.inference.export import MANIFEST, export

    try:
        manifest = export(AltCLIP.from_pretrained(args.model), out, args.to, int8=args.int8)
    except ImportError as e:
        raise CLIError(str(e)) from None
    for tower, measured in manifest["parity"].items():
        if isinstance(measured, dict):
            warn(f"{tower}: max |difference| to torch fp32 {measured['max_abs_diff']:.2e}, "
                 f"min cosine {measured['min_cosine']:.6f}")
    print(json.dumps({"out": str(out), "format": args.to, "weights": manifest["weights"], "manifest": str(out / MANIFEST)}))


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = command_parser(
        sub, "export", "write both towers as ONNX or OpenVINO graphs (dynamic batch and sequence) for deployment",
        [
            "altclip export AltCLIP --to onnx --out altclip-onnx/       # text.onnx, image.onnx, tokenizer, JSON",
            "altclip export ./my-finetune --to openvino --out altclip-ov/",
            "altclip export AltCLIP --to openvino --int8 --out altclip-ov-int8/   # int8 weights, a quarter the size",
        ],
    )
    p.add_argument("model", metavar="MODEL", help="registry name, hub id or checkpoint folder")
    p.add_argument("--to", required=True, choices=["onnx", "openvino"], help="graph format")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (created; must be empty)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    p.add_argument("--int8", action="store_true", help="OpenVINO only: int8 weights (NNCF weight compression); the "
                   "parity printed is their cosine to fp32")
    p.set_defaults(func=run)
