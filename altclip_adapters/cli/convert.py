"""``altclip convert``: between the BAAI/transformers layout, open_clip and sentence-transformers."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ._common import CLIError

LAYOUTS = ("baai", "open_clip", "sentence-transformers")


def layout_of(source: str) -> str:
    """Which layout ``source`` is in: a sentence-transformers folder (modules.json), an open_clip
    folder (open_clip_config.json), an open_clip checkpoint file (e.g. open_clip_train's
    ``epoch_N.pt``), or the BAAI layout (a folder with config.json, a registry name, a hub id)."""
    path = Path(source).expanduser()
    if path.is_file():
        return "open_clip checkpoint"
    if (path / "modules.json").is_file():
        return "sentence-transformers"
    if (path / "open_clip_config.json").is_file():
        return "open_clip"
    if path.exists() and not (path / "config.json").is_file():
        raise CLIError(f"{path} is not a BAAI-layout (config.json), open_clip (open_clip_config.json) or sentence-transformers (modules.json) folder")
    return "baai"


def write_baai(source: str, layout: str, folder: Path, arch: str | None = None) -> None:
    """Write ``source`` (in ``layout``) as a BAAI/AltCLIP-layout folder; an open_clip checkpoint
    file is loaded into the open_clip model ``arch``."""
    if layout == "sentence-transformers":
        from ..sentence_transformers import load, save_checkpoint

        save_checkpoint(load(source), folder)
    elif layout.startswith("open_clip"):
        import open_clip

        from ..adapters.open_clip import save_hf

        if layout == "open_clip checkpoint" and not arch:
            raise CLIError("an open_clip checkpoint file needs --arch: the open_clip model it was trained as "
                           "(AltCLIP, AltCLIP-m9, AltCLIP-m18 or local-dir:FOLDER)")
        name = arch if layout == "open_clip checkpoint" else f"local-dir:{Path(source).expanduser().resolve()}"
        model = open_clip.create_model(name)
        if layout == "open_clip checkpoint":
            open_clip.load_checkpoint(model, str(source))
        save_hf(model, open_clip.get_tokenizer(name), folder)
    else:
        from ..core.model import AltCLIP

        AltCLIP.from_pretrained(source).save_pretrained(folder)


def run(args: argparse.Namespace) -> None:
    layout, out = layout_of(args.source), Path(args.out)
    if layout == args.to != "baai":
        raise CLIError(f"{args.source} is already a {layout} folder")
    if args.arch and layout != "open_clip checkpoint":
        raise CLIError("--arch only applies to an open_clip checkpoint file")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CLIError(f"{out} exists and is not an empty folder")
    if args.native and args.to != "sentence-transformers":
        raise CLIError("--native only applies to --to sentence-transformers")
    with tempfile.TemporaryDirectory() as tmp:
        if args.to == "baai":
            write_baai(args.source, layout, out, args.arch)
        else:
            baai = args.source if layout == "baai" else Path(tmp)
            if layout != "baai":
                write_baai(args.source, layout, Path(tmp), args.arch)
            if args.to == "open_clip":
                from ..adapters.open_clip import save_for_open_clip

                save_for_open_clip(baai, out)
            elif args.native:
                from ..sentence_transformers import export_native

                export_native(baai, out)
            else:
                from ..sentence_transformers import load

                load(baai).save(str(out))
    print(f"wrote {args.to} folder {out} from {layout} {args.source}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    convert = sub.add_parser("convert", help="convert between the BAAI layout, open_clip and sentence-transformers folders")
    convert.add_argument("source", help="registry name, hub id, a BAAI-layout, open_clip or sentence-transformers folder, "
                         "or an open_clip checkpoint file (with --arch)")
    convert.add_argument("--arch", help="open_clip model of a checkpoint file: AltCLIP, AltCLIP-m9, AltCLIP-m18 or local-dir:FOLDER")
    convert.add_argument("--to", choices=LAYOUTS, required=True)
    convert.add_argument("--out", required=True, help="the folder to write (new or empty)")
    convert.add_argument("--native", action="store_true", help="sentence-transformers: its own Transformer module, loadable without this package")
    convert.set_defaults(func=run)
