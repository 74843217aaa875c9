"""``altclip convert``: between the BAAI/transformers layout, open_clip and sentence-transformers."""

from __future__ import annotations

import argparse
import json
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from .. import registry
from ._common import CLIError, check_model, command_parser

if TYPE_CHECKING:
    from ..config import AltCLIPConfig

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
    from ..config import AltCLIPConfig

    card = registry.find(arch)
    if card is not None:
        return AltCLIPConfig.from_dict(card["architecture"])
    if arch.startswith("local-dir:"):
        path = Path(arch.removeprefix("local-dir:")).expanduser() / "open_clip_config.json"
        if not path.is_file():
            raise CLIError(f"--arch {arch}: {path} does not exist")
        altclip = json.loads(path.read_text()).get("model_cfg", {}).get("altclip")
        if altclip is None:
            raise CLIError(f"--arch {arch}: {path} describes no AltCLIP model (no model_cfg.altclip)")
        return AltCLIPConfig.from_dict(altclip)
    raise CLIError(f"--arch must be {', '.join(registry.names())} or local-dir:FOLDER; got {arch!r}")


def file_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of a checkpoint file, read as ``open_clip.load_checkpoint`` reads it (a
    ``state_dict`` entry if there is one, a ``module.`` prefix dropped); memory-mapped, no tensor data is read."""
    import torch
    from safetensors import SafetensorError, safe_open

    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the pre-1.6 format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{path} is not a readable checkpoint file: {e}") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no state dict of tensors")
    return {key.removeprefix("module."): tuple(v.shape) for key, v in state.items() if isinstance(v, torch.Tensor)}


def shape_problems(found: dict[str, tuple[int, ...]], config: AltCLIPConfig) -> tuple[list[str], str]:
    """How the tensors ``found`` (open_clip's core keys, or BAAI/transformers keys) differ from the AltCLIP of
    ``config``: (problems, one example of the first kind), both empty when they fit. Builds the model on the
    meta device: no memory, no weights."""
    import torch

    from ..bridges.hf import HF_TABLE, IGNORED, canonical_key
    from ..bridges.mapping import export_state_dict
    from ..core.model import AltCLIP

    with torch.device("meta"):
        state = AltCLIP(config).state_dict()
    if any(key.startswith(("text_model.", "vision_model.")) for key in found):  # BAAI/transformers keys
        found = {canonical_key(k): shape for k, shape in found.items() if canonical_key(k) not in IGNORED}
        state = export_state_dict(HF_TABLE, state)
    else:
        found = {k: shape for k, shape in found.items() if k != "logit_bias"}  # open_clip's optional SigLIP bias
    expected = {key: tuple(tensor.shape) for key, tensor in state.items()}
    misshaped = [k for k in expected if k in found and found[k] != expected[k]]
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    problems, example = [], ""
    if misshaped:
        problems.append(f"{len(misshaped)} tensor{'s' * (len(misshaped) != 1)} of another shape")
        k = misshaped[0]
        example = f"{k} is {list(found[k])} in the file, {list(expected[k])} in the model"
    if missing:
        problems.append(f"{len(missing)} missing")
        example = example or f"{missing[0]} is missing"
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected")
        example = example or f"{unexpected[0]} is not in the model"
    return problems, example


def check_arch(path: Path, arch: str) -> None:
    """Raise CLIError, in one line, when the checkpoint file ``path`` does not fit the open_clip model ``arch``:
    which tensors differ, one example with both shapes, and which registry architecture fits the file, if any."""
    found = file_shapes(path)
    problems, example = shape_problems(found, arch_config(arch))
    if not problems:
        return
    fits = [name for name in registry.names() if not shape_problems(found, registry.config(name))[0]]
    if fits:
        hint = "it fits " + " or ".join(f"--arch {name}" for name in fits)
    else:
        hint = (f"no registry architecture ({', '.join(registry.names())}) fits it: give --arch local-dir:FOLDER, "
                "the open_clip folder it was trained from")
    raise CLIError(f"{path} does not fit --arch {arch}: {', '.join(problems)} (e.g. {example}); {hint}")


def open_clip_weights(folder: Path) -> Path | None:
    """The weights file open_clip loads from an open_clip folder (its preferred names), if there is one."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    return next((folder / n for n in (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME) if (folder / n).is_file()), None)


def write_baai(source: str, layout: str, folder: Path, arch: str | None = None) -> None:
    """Write ``source`` (in ``layout``) as a BAAI/AltCLIP-layout folder; an open_clip checkpoint
    file is loaded into the open_clip model ``arch``. Shapes are checked before any model is built."""
    if layout == "sentence-transformers":
        from ..sentence_transformers import load, save_checkpoint

        save_checkpoint(load(source), folder)
    elif layout.startswith("open_clip"):
        import open_clip

        from ..adapters.open_clip import save_hf

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
        from ..core.model import AltCLIP

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
