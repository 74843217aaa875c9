"""Finding checkpoint folders (local, registry, hub), reading their weight files lazily, and what writing
one needs beyond transformers (the slow-tokenizer files, file modes)."""

from __future__ import annotations

import base64
import json
import pickle
import socket
import urllib.request
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from safetensors import SafetensorError, safe_open

from altclip_adapters.model import registry
from altclip_adapters.atomic import write_bytes, write_json

if TYPE_CHECKING:
    import torch

HUB_PROBE_TIMEOUT = 3.0  # seconds: how long the hub (or the proxy to it) may take to accept a connection

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
    """Lazy access to the tensors of one checkpoint (single file or shards): a file is opened on its first key.

    Args:
        files: tensor key -> the file holding it.
        source: what to name in messages (the weight file or the shard index).
        opened: handles already open, by file.
    """

    def __init__(self, files: dict[str, Path], source: str, opened: dict[Path, object] | None = None):
        self._files = files  # key -> file holding it
        self._open: dict[Path, object] = dict(opened or {})
        self.source = source

    def keys(self) -> list[str]:
        """Every tensor key, as the files spell it."""
        return list(self._files)

    def _handle(self, key: str):
        path = self._files[key]
        if path not in self._open:
            self._open[path] = _open_file(path)
        return self._open[path]

    def get(self, key: str) -> torch.Tensor:
        """The tensor ``key`` (CPU, as stored); KeyError for a key no file holds, ValueError for an unreadable
        file."""
        handle = self._handle(key)
        return handle.get_tensor(key) if hasattr(handle, "get_tensor") else handle[key]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's shape, read from the file headers (no tensor data is read)."""
        return {key: _shape(self._handle(key), key) for key in self._files}


def _shape(handle, key: str) -> tuple[int, ...]:
    return tuple(handle.get_slice(key).get_shape()) if hasattr(handle, "get_slice") else tuple(handle[key].shape)


def _read(path: Path):
    """A safetensors handle, or what ``torch.load(weights_only=True)`` gives (memory-mapped when the file's format
    allows it). Raises ValueError naming the file when it cannot be read."""
    import torch

    try:
        if path.suffix == ".safetensors":
            return safe_open(str(path), framework="pt")
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the pre-1.6 format cannot be memory-mapped (a broken file fails again below)
            return torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{path} is not a readable checkpoint file (corrupted or truncated?): {e}") from e


def _open_file(path: Path):
    """A safetensors handle or a flat state dict of tensors (see :func:`_read`)."""
    import torch

    state = _read(path)
    if not hasattr(state, "get_tensor") and (
        not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise ValueError(f"{path} does not hold a flat state dict of tensors")
    return state


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of one checkpoint file, read as ``open_clip.load_checkpoint`` reads it (a
    ``state_dict`` entry if there is one, a ``module.`` prefix dropped); memory-mapped, no tensor data is read.

    Args:
        path: a ``.safetensors`` file, or a torch pickle (read with ``weights_only=True``).

    Returns:
        Tensor key -> shape.

    Raises:
        ValueError: the file is unreadable (corrupted, truncated) or holds no tensors.
    """
    import torch

    state = _read(path)
    if hasattr(state, "get_slice"):
        with state:
            return {key: _shape(state, key) for key in state.keys()}  # noqa: SIM118
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no state dict of tensors")
    return {key.removeprefix("module."): tuple(v.shape) for key, v in state.items() if isinstance(v, torch.Tensor)}


def open_weights(folder: Path) -> Weights:
    """The weights in ``folder``: model.safetensors, pytorch_model.bin, or either sharded (*.index.json), in that
    order of preference.

    Raises:
        FileNotFoundError: the folder holds none of them, or an index names a shard that is missing.
        ValueError: a weight file is unreadable or not a flat state dict of tensors, or an index has no
            ``weight_map``.
    """
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
    """A local folder for a registry name, a hub repo id or a local folder (returned as is).

    Args:
        name_or_path: a registry name (``"AltCLIP"``), a hub id (``"BAAI/AltCLIP"``) or a folder.
        revision: the hub revision (branch, tag or commit); ignored for a local folder.

    Returns:
        The folder: the local one, or the hub snapshot in the Hugging Face cache.

    Raises:
        ValueError: ``name_or_path`` is a file.
        FileNotFoundError: anything else that cannot be had, in one line saying what to do (see :func:`download`).
    """
    source = checkpoint_source(name_or_path)
    return source if isinstance(source, Path) else download(source, revision=revision)


def checkpoint_source(name_or_path: str | Path) -> Path | str:
    """The local folder ``name_or_path`` names, or the hub repo id it stands for (a registry name gives its
    card's repo id); touches no network.

    Raises:
        ValueError: ``name_or_path`` is a file.
        FileNotFoundError: it is neither a folder, a registry name nor shaped like a hub id (``owner/name``).
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        raise ValueError(f"{path} is a file; AltCLIP.from_pretrained expects a checkpoint folder (config.json + weights)")
    card = registry.find(str(name_or_path))
    repo_id = card.hub.repo_id if card else str(name_or_path)
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")):
        raise FileNotFoundError(
            f"{str(name_or_path)!r} is not a local folder, a registry name ({', '.join(registry.names())}) "
            "or a Hugging Face hub id"
        )
    return repo_id


def hub_unreachable(endpoint: str | None = None, timeout: float = HUB_PROBE_TIMEOUT) -> str | None:
    """Whether the hub accepts a TCP connection: huggingface_hub itself retries a failed connection with back-off
    for ~15-50 s before it falls back to its cache; this probe lets a caller decide in at most ``timeout`` seconds.

    Args:
        endpoint: the hub's URL (default: huggingface_hub's, ``HF_ENDPOINT``). When the environment names a proxy
            for it (``HTTPS_PROXY`` etc., honouring ``NO_PROXY``), the proxy is what is tried.
        timeout: seconds to wait for the connection.

    Returns:
        None when the connection opened, else why not, in a few words (``"host:443: timed out"``).
    """
    if endpoint is None:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    url = urlsplit(endpoint)
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(url.hostname or ""):
        url = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    address = (url.hostname or "", url.port or (443 if url.scheme == "https" else 80))
    try:
        socket.create_connection(address, timeout=timeout).close()
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        return f"{address[0]}:{address[1]}: {reason}"
    return None


def one_line(error: BaseException) -> str:
    """An exception's message on one line (huggingface_hub's span several)."""
    return " ".join(str(error).split())


def download(repo_id: str, *, revision: str | None = None) -> Path:
    """The hub snapshot of ``repo_id`` with its config, tokenizer, preprocessing and one weight format.

    Reads the local Hugging Face cache without asking the hub when ``HF_HUB_OFFLINE=1`` is set or when the hub
    does not accept a connection within ``HUB_PROBE_TIMEOUT`` seconds (:func:`hub_unreachable`).

    Args:
        repo_id: ``owner/name`` on the hub.
        revision: a branch, tag or commit (default: ``main``).

    Returns:
        The snapshot folder in the Hugging Face cache.

    Raises:
        FileNotFoundError: the snapshot can be had neither from the hub nor from the cache, or the repo has no
            weights; the message is one line saying what to do.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    unreachable = None if constants.HF_HUB_OFFLINE else hub_unreachable()
    cache_only = constants.HF_HUB_OFFLINE or unreachable is not None
    try:
        for weights in ("model*.safetensors", "pytorch_model*.bin"):
            patterns = SMALL_FILES + [weights]
            folder = snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=cache_only)
            folder = Path(folder)
            if any(folder.glob(weights)):
                return folder
    except LocalEntryNotFoundError as e:
        if not cache_only:
            raise FileNotFoundError(f"could not get {repo_id!r} from the Hugging Face hub: {one_line(e)}") from e
        why = "HF_HUB_OFFLINE=1 is set" if unreachable is None else f"the hub is out of reach ({unreachable})"
        raise FileNotFoundError(
            f"{repo_id} (revision {revision or 'main'}) is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
            f"and {why}: pass a local checkpoint folder instead, or download it once where the hub is reachable "
            f"(`hf download {repo_id}`, then copy the cache or set HF_HOME to it)"
            + ("" if unreachable is None else "; HF_HUB_OFFLINE=1 makes the Hugging Face libraries skip the hub")
        ) from e
    except (HfHubHTTPError, OSError) as e:
        raise FileNotFoundError(
            f"could not get {repo_id!r} from the Hugging Face hub (revision {revision or 'main'}): {one_line(e)}"
        ) from e
    raise FileNotFoundError(f"the hub repo {repo_id!r} has no model.safetensors or pytorch_model.bin")


# Writing folders -----------------------------------------------------------------------------------
SENTENCEPIECE_MODEL = "sentencepiece.bpe.model"


def write_slow_tokenizer_files(tokenizer, folder: Path) -> None:
    """Write ``sentencepiece.bpe.model`` and ``special_tokens_map.json`` beside the ``tokenizer.json`` that
    transformers 5 writes: the rest of the BAAI/AltCLIP tokenizer file set, which slow (sentencepiece)
    tokenizers, transformers 4's ``XLMRobertaTokenizer`` and FlagAI read.

    The sentencepiece model is the file the tokenizer was loaded from (transformers keeps its path as
    ``vocab_file``) or, for a tokenizer loaded without one, rebuilt from its unigram vocabulary and
    normalizer (:func:`sentencepiece_model`). Both files are written atomically.

    Args:
        tokenizer (transformers.PreTrainedTokenizerBase): an XLM-R tokenizer (fast or slow).
        folder: the checkpoint folder being written.

    Raises:
        ValueError: the tokenizer is not XLM-R's kind (a unigram vocabulary in fairseq's order).
    """
    source = getattr(tokenizer, "vocab_file", None)
    target = folder / SENTENCEPIECE_MODEL
    if source and Path(source).is_file():
        if Path(source).resolve() != target.resolve():
            write_bytes(target, Path(source).read_bytes())
    else:
        write_bytes(target, sentencepiece_model(tokenizer))
    special = {str(token): token for token in tokenizer.added_tokens_decoder.values()}

    def entry(token: str):
        added = special.get(token)
        if added is None or not (added.lstrip or added.rstrip or added.single_word):
            return token
        return {"content": token, "lstrip": added.lstrip, "normalized": added.normalized, "rstrip": added.rstrip,
                "single_word": added.single_word}

    tokens = {name: entry(token) for name, token in tokenizer.special_tokens_map.items()}
    write_json(folder / "special_tokens_map.json", tokens)


def sentencepiece_model(tokenizer) -> bytes:
    """A serialised sentencepiece ``ModelProto`` equal in effect to an XLM-R fast tokenizer: its unigram pieces
    and scores in sentencepiece's order (``<unk>``, ``<s>``, ``</s>``, then the pieces; the fast tokenizer's
    fairseq order is ``<s>``, ``<pad>``, ``</s>``, ``<unk>``, the pieces, ``<mask>``), and its precompiled
    normalisation map. The inverse of transformers' ``SentencePieceExtractor``.

    Raises:
        ValueError: a tokenizer of another layout.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = [entry[0] for entry in spec["model"]["vocab"]] if spec["model"]["type"] == "Unigram" else []
    fairseq = [tokenizer.bos_token, tokenizer.pad_token, tokenizer.eos_token, tokenizer.unk_token]
    if vocab[:4] != fairseq or vocab[-1:] != [tokenizer.mask_token]:
        raise ValueError(
            f"cannot write {SENTENCEPIECE_MODEL} for this tokenizer: expected an XLM-R unigram vocabulary "
            f"({', '.join(map(str, fairseq))}, pieces, {tokenizer.mask_token}); got {type(tokenizer).__name__}"
        )
    normalizers = spec.get("normalizer") or {}
    normalizers = normalizers.get("normalizers", []) if normalizers.get("type") == "Sequence" else [normalizers]
    charsmap = next((n["precompiled_charsmap"] for n in normalizers if n.get("type") == "Precompiled"), "")

    piece = pb.ModelProto.SentencePiece
    model = pb.ModelProto()
    model.pieces.add(piece=tokenizer.unk_token, score=0.0, type=piece.UNKNOWN)
    model.pieces.add(piece=tokenizer.bos_token, score=0.0, type=piece.CONTROL)
    model.pieces.add(piece=tokenizer.eos_token, score=0.0, type=piece.CONTROL)
    for token, score in spec["model"]["vocab"][4:-1]:
        model.pieces.add(piece=token, score=score, type=piece.NORMAL)
    trainer, normalizer = model.trainer_spec, model.normalizer_spec
    trainer.model_type, trainer.vocab_size = pb.TrainerSpec.UNIGRAM, len(model.pieces)
    trainer.unk_id, trainer.bos_id, trainer.eos_id, trainer.pad_id = 0, 1, 2, -1
    normalizer.name = "nmt_nfkc" if charsmap else "identity"  # the charsmap, when there is one, is what applies
    normalizer.precompiled_charsmap = base64.b64decode(charsmap)
    normalizer.add_dummy_prefix = bool(getattr(tokenizer, "add_prefix_space", True))
    normalizer.remove_extra_whitespaces = normalizer.escape_whitespaces = True
    return model.SerializeToString()
