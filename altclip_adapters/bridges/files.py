"""Finding checkpoint folders (local, registry, hub) and reading their weight files lazily."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .. import registry

# What a checkpoint folder holds besides its weights (config, tokenizer, preprocessing).
SMALL_FILES = [
    "config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "sentencepiece.bpe.model",
    "*.index.json",
]
WEIGHT_FILES = ["model.safetensors", "pytorch_model.bin"]  # in order of preference; each may be sharded


class Weights:
    """Lazy access to the tensors of one checkpoint (single file or shards)."""

    def __init__(self, files: dict[str, Path], source: str, opened: dict[Path, object] | None = None):
        self._files = files  # key -> file holding it
        self._open: dict[Path, object] = dict(opened or {})
        self.source = source

    def keys(self) -> list[str]:
        return list(self._files)

    def get(self, key: str) -> torch.Tensor:
        path = self._files[key]
        if path not in self._open:
            self._open[path] = _open_file(path)
        handle = self._open[path]
        return handle.get_tensor(key) if hasattr(handle, "get_tensor") else handle[key]


def _open_file(path: Path):
    """A safetensors handle or a state dict read with ``weights_only=True`` (memory-mapped)."""
    try:
        if path.suffix == ".safetensors":
            return safe_open(str(path), framework="pt")
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (SafetensorError, OSError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{path} is not a readable checkpoint file (corrupted or truncated?): {e}") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a flat state dict of tensors")
    return state


def open_weights(folder: Path) -> Weights:
    """The weights in ``folder``: model.safetensors, pytorch_model.bin, or either sharded (*.index.json)."""
    for name in WEIGHT_FILES:
        single, index = folder / name, folder / f"{name}.index.json"
        if single.is_file():
            handle = _open_file(single)
            return Weights({k: single for k in handle.keys()}, str(single), opened={single: handle})
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{index} is not a valid shard index (needs a 'weight_map'): {e}") from e
            shards = {folder / shard for shard in weight_map.values()}
            for shard in shards:
                if not shard.is_file():
                    raise FileNotFoundError(f"{index} names the shard {shard.name}, which is not in {folder}")
            return Weights({k: folder / shard for k, shard in weight_map.items()}, str(index))
    raise FileNotFoundError(
        f"{folder} holds no weights: expected one of {', '.join(WEIGHT_FILES)} or a sharded *.index.json"
    )


def resolve_checkpoint(name_or_path: str | Path, *, revision: str | None = None) -> Path:
    """A local folder for a registry name, a hub repo id or a local folder (returned as is)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        raise ValueError(f"{path} is a file; AltCLIP.from_pretrained expects a checkpoint folder (config.json + weights)")
    card = registry.find(str(name_or_path))
    repo_id = card["hub"]["repo_id"] if card else str(name_or_path)
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")):
        raise FileNotFoundError(
            f"{str(name_or_path)!r} is not a local folder, a registry name ({', '.join(registry.names())}) "
            "or a Hugging Face hub id"
        )
    return download(repo_id, revision=revision)


def download(repo_id: str, *, revision: str | None = None) -> Path:
    """The hub snapshot of ``repo_id`` with its config, tokenizer, preprocessing and one weight format."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        for weights in ("model*.safetensors", "pytorch_model*.bin"):
            folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=SMALL_FILES + [weights]))
            if any(folder.glob(weights)):
                return folder
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise FileNotFoundError(
            f"could not get {repo_id!r} from the Hugging Face hub (revision {revision or 'main'}): {e}"
        ) from e
    raise FileNotFoundError(f"the hub repo {repo_id!r} has no model.safetensors or pytorch_model.bin")
