"""``altclip convert``: between the BAAI/transformers layout, open_clip and sentence-transformers."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from altclip_adapters.model import registry
from altclip_adapters.cli._common import CLIError, check_model, command_parser

if TYPE_CHECKING:
    from altclip_adapters.model.config import AltCLIPConfig

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


def arch_config(arch: str) -> AltCLIPConfig:
    """The AltCLIP architecture an open_clip model name stands for: a registry name, or ``local-dir:FOLDER`` (the
    ``"altclip"`` entry of the folder's open_clip_config.json). Raises CLIError for any other name."""
    from altclip_adapters.model.config import OPEN_CLIP_KEY, AltCLIPConfig

    card = registry.find(arch)
    if card is not None:
        return card.config()
    if arch.startswith("local-dir:"):
        path = Path(arch.removeprefix("local-dir:")).expanduser() / "open_clip_config.json"
        if not path.is_file():
            raise CLIError(f"--arch {arch}: {path} does not exist")
        altclip = json.loads(path.read_text()).get("model_cfg", {}).get(OPEN_CLIP_KEY)
        if altclip is None:
            raise CLIError(f"--arch {arch}: {path} describes no AltCLIP model (no model_cfg.altclip)")
        return AltCLIPConfig.from_dict(altclip)
    raise CLIError(f"--arch must be {', '.join(registry.names())} or local-dir:FOLDER; got {arch!r}")


def check_arch(path: Path, arch: str) -> None:
    """Raise CLIError, in one line, when the checkpoint file ``path`` does not fit the open_clip model ``arch``:
    which tensors differ, one example with both shapes, and which registry architecture fits the file, if any."""
    from altclip_adapters.model.files import tensor_shapes
    from altclip_adapters.model.core import architecture_mismatch

    found = tensor_shapes(path)
    mismatch = architecture_mismatch(found, arch_config(arch))
    if not mismatch:
        return
    fits = [name for name in registry.names() if not architecture_mismatch(found, registry.config(name))]
    if fits:
        hint = "it fits " + " or ".join(f"--arch {name}" for name in fits)
    else:
        hint = (f"no registry architecture ({', '.join(registry.names())}) fits it: give --arch local-dir:FOLDER, "
                "the open_clip folder it was trained from")
    raise CLIError(f"{path} does not fit --arch {arch}: {mismatch.summary()}; {hint}")


def open_clip_weights(folder: Path) -> Path | None:
    """The weights file open_clip loads from an open_clip folder (its preferred names), if there is one."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    return next((folder / n for n in (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME) if (folder / n).is_file()), None)


def write_baai(source: str, layout: str, folder: Path, arch: str | None = None) -> None:
    """Write ``source`` (in ``layout``) as a BAAI/AltCLIP-layout folder; an open_clip checkpoint
    file is loaded into the open_clip model ``arch``. Shapes are checked before any model is built."""
    if layout == "sentence-transformers":
        from altclip_adapters.integrations.sentence_transformers import is_native_folder, load, save_checkpoint

        if is_native_folder(source):  # written by --native: its root is the transformers checkpoint
            from altclip_adapters.model.core import AltCLIP

            AltCLIP.from_pretrained(Path(source).expanduser()).save_pretrained(folder)
        else:
            save_checkpoint(load(source), folder)
    elif layout.startswith("open_clip"):
        import open_clip

        from altclip_adapters.integrations.open_clip import save_hf

        if layout == "open_clip checkpoint":
            path = str(Path(source).expanduser())
            check_arch(Path(path), arch)
            if arch.startswith("local-dir:"):  # open_clip loads the folder's weights (pretrained= is ignored)
                model = open_clip.create_model(arch)
                open_clip.load_checkpoint(model, path)
            else:
                model = open_clip.create_model(arch, pretrained=path)
            name = arch
        else:
            name = f"local-dir:{Path(source).expanduser().resolve()}"
            weights = open_clip_weights(Path(source).expanduser())
            if weights is not None:
                check_arch(weights, name)
            model = open_clip.create_model(name)
        save_hf(model, open_clip.get_tokenizer(name), folder)
    else:
        from altclip_adapters.model.core import AltCLIP

        AltCLIP.from_pretrained(source).save_pretrained(folder)


def run(args: argparse.Namespace) -> None:
    layout, out = layout_of(args.source), Path(args.out)
    if layout == args.to != "baai":
        raise CLIError(f"{args.source} is already a {layout} folder")
    if args.arch and layout != "open_clip checkpoint":
        raise CLIError("--arch only applies to an open_clip checkpoint file")
    if layout == "open_clip checkpoint" and not args.arch:
        raise CLIError("an open_clip checkpoint file needs --arch: the open_clip model it was trained as "
                       f"({', '.join(registry.names())} or local-dir:FOLDER)")
    if args.arch:
        arch_config(args.arch)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CLIError(f"{out} exists and is not an empty folder")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"the folder for --out does not exist: {out.parent}")
    if args.native and args.to != "sentence-transformers":
        raise CLIError("--native only applies to --to sentence-transformers")
    if layout == "baai":
        check_model(args.source)
    with tempfile.TemporaryDirectory() as tmp:
        if args.to == "baai":
            write_baai(args.source, layout, out, args.arch)
        else:
            baai = args.source if layout == "baai" else Path(tmp)
            if layout != "baai":
                write_baai(args.source, layout, Path(tmp), args.arch)
            if args.to == "open_clip":
                from altclip_adapters.integrations.open_clip import save_for_open_clip

                save_for_open_clip(baai, out)
            elif args.native:
                from altclip_adapters.integrations.sentence_transformers import export_native

                export_native(baai, out)
            else:
                from altclip_adapters.integrations.sentence_transformers import load

                load(baai).save(str(out))
    print(f"wrote {args.to} folder {out} from {layout} {args.source}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    convert = command_parser(
        sub, "convert", "convert between the BAAI/transformers layout, open_clip and sentence-transformers folders",
        [
            "altclip convert AltCLIP --to sentence-transformers --out altclip-st/    # --native: no altclip_adapters needed",
            "altclip convert logs/run/checkpoints/epoch_3.pt --arch AltCLIP --to baai --out finetuned/",
        ],
    )
    convert.epilog += "\n\nThe BAAI layout is the one transformers.AltCLIPModel and AltCLIPProcessor load."
    convert.add_argument("source", help="registry name, hub id, a BAAI-layout, open_clip or sentence-transformers folder, "
                         "or an open_clip checkpoint file such as open_clip_train's epoch_N.pt (with --arch)")
    convert.add_argument("--arch", help=f"the open_clip model a checkpoint file was trained as: {', '.join(registry.names())} "
                         "or local-dir:FOLDER (default: none; required for a checkpoint file)")
    convert.add_argument("--to", choices=LAYOUTS, required=True, help="the layout to write")
    convert.add_argument("--out", required=True, help="the folder to write (new or empty)")
    convert.add_argument("--native", action="store_true",
                         help="with --to sentence-transformers: its own Transformer module, loadable without this package")
    convert.set_defaults(func=run)
