"""Bridge between the Hugging Face AltCLIP layout (transformers / BAAI checkpoints) and the core.

The table below is the whole mapping; ``_mapping.py`` applies it in both directions. This module sits below
``core.py``: it never imports the model class; ``AltCLIP.from_pretrained`` passes itself in (transformers'
``PreTrainedModel.from_pretrained`` shape: the loader is given the class to build).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from safetensors.torch import save_file

from altclip_adapters.atomic import atomic_path, write_json
from altclip_adapters.model.config import AltCLIPConfig
from altclip_adapters.model.processor import AltCLIPProcessor
from altclip_adapters.model.files import Weights, open_weights, resolve_checkpoint
from altclip_adapters.model._mapping import Mismatch, Rule, compare, export_state_dict, foreign_shapes, import_state_dict, rule

V = "vision_model.encoder.layers.{n}"
HF_TABLE: list[Rule] = [
    # core key                                 HF AltCLIP key(s)                                        op
    rule("text.encoder.{rest}",                 "text_model.roberta.{rest}"),
    rule("text.pre_ln.{p}",                     "text_model.pre_LN.{p}"),
    rule("text.transformation.{p}",             "text_model.transformation.{p}"),
    rule("text.transformation_pre.{p}",         "text_model.transformation_pre.{p}"),
    rule("text_projection.weight",              "text_projection.weight"),
    rule("visual_projection.weight",            "visual_projection.weight"),
    rule("logit_scale",                         "logit_scale"),
    rule("vision.vit.cls_token",                "vision_model.embeddings.class_embedding",               "token"),
    rule("vision.vit.pos_embed",                "vision_model.embeddings.position_embedding.weight",     "batch"),
    rule("vision.vit.patch_embed.proj.weight",  "vision_model.embeddings.patch_embedding.weight"),
    rule("vision.vit.norm_pre.{p}",             "vision_model.pre_layrnorm.{p}"),
    rule("vision.vit.blocks.{n}.norm1.{p}",     f"{V}.layer_norm1.{{p}}"),
    rule("vision.vit.blocks.{n}.attn.qkv.{p}",  (f"{V}.self_attn.q_proj.{{p}}", f"{V}.self_attn.k_proj.{{p}}",
                                                 f"{V}.self_attn.v_proj.{{p}}"),                           "qkv"),
    rule("vision.vit.blocks.{n}.attn.proj.{p}", f"{V}.self_attn.out_proj.{{p}}"),
    rule("vision.vit.blocks.{n}.norm2.{p}",     f"{V}.layer_norm2.{{p}}"),
    rule("vision.vit.blocks.{n}.mlp.fc1.{p}",   f"{V}.mlp.fc1.{{p}}"),
    rule("vision.vit.blocks.{n}.mlp.fc2.{p}",   f"{V}.mlp.fc2.{{p}}"),
    rule("vision.vit.norm.{p}",                 "vision_model.post_layernorm.{p}"),
]

# Tensors a checkpoint may carry that AltCLIP never uses: index buffers transformers 4 wrote, and
# XLM-R's pooler, which FlagAI-era files may hold (transformers once listed it as ignorable).
IGNORED = {
    "text_model.roberta.embeddings.position_ids",
    "text_model.roberta.embeddings.token_type_ids",
    "vision_model.embeddings.position_ids",
    "text_model.roberta.pooler.dense.weight",
    "text_model.roberta.pooler.dense.bias",
}

# Layer lists are spelled `encoder.layer.N` (text, BAAI files; both towers in files written by
# transformers 5) or `encoder.layers.N` (vision, BAAI files; both towers in transformers 5 memory).
# The table uses the BAAI spelling, which is also what we write.
_SPELLING = [
    (re.compile(r"^(text_model\.roberta\.encoder)\.layers\."), r"\1.layer."),
    (re.compile(r"^(vision_model\.encoder)\.layer\."), r"\1.layers."),
]


HF_PREFIXES = ("text_model.", "vision_model.")  # every tensor of a BAAI/transformers AltCLIP checkpoint starts so


def canonical_key(key: str) -> str:
    """A checkpoint key in the BAAI spelling."""
    for pattern, repl in _SPELLING:
        key = pattern.sub(repl, key)
    return key


def is_hf_layout(keys: Iterable[str]) -> bool:
    """Whether state-dict ``keys`` are BAAI/transformers AltCLIP keys (rather than the core's / open_clip's)."""
    return any(key.startswith(HF_PREFIXES) for key in keys)


def hf_keys(keys: Iterable[str]) -> dict[str, str]:
    """The BAAI spelling of each checkpoint key AltCLIP uses -> the key as the file spells it (``IGNORED`` left out)."""
    return {canonical_key(key): key for key in keys if canonical_key(key) not in IGNORED}


def read_config(folder: Path) -> AltCLIPConfig:
    """The architecture of a BAAI-layout folder: its config.json, and ``transformation_pre`` from its weights'
    keys (AltCLIP-m18's extra head; config.json does not record it).

    Raises:
        FileNotFoundError: the folder has no config.json or no weights.
        ValueError: config.json is not valid JSON or not an AltCLIP config, or a weight file is unreadable.
    """
    return _open_folder(folder)[0]


def _open_folder(folder: Path) -> tuple[AltCLIPConfig, Weights]:
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not an AltCLIP checkpoint folder")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    config = AltCLIPConfig.from_hf(data)
    weights = open_weights(folder)
    config.text.transformation_pre = "text_model.transformation_pre.weight" in hf_keys(weights.keys())
    return config, weights


def load_hf_checkpoint(
    model_class: type[nn.Module],
    folder: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """A ``model_class`` from a folder in the BAAI/transformers layout (config.json + weights), strictly.

    Args:
        model_class: the class to build (``AltCLIP`` or a subclass), given by the caller so that this module needs
            no import of the core.
        folder: the checkpoint folder.
        device: where the model goes (default: the CPU).
        dtype: the floating-point dtype of the weights (default: float32).

    Returns:
        The model in eval mode, without a processor.

    Raises:
        FileNotFoundError: as :func:`read_config`.
        ValueError: every missing, unexpected and mis-shaped tensor, listed before any is read; or an unreadable
            file.
    """
    config, weights = _open_folder(Path(folder))
    with torch.device("meta"):
        model = model_class(config)
    dtype = dtype or torch.float32
    keys = hf_keys(weights.keys())
    shapes = weights.shapes()

    def get(key: str) -> torch.Tensor:
        tensor = weights.get(keys[key])
        return tensor.to(dtype) if tensor.is_floating_point() else tensor

    found = {key: shapes[name] for key, name in keys.items()}
    state = import_state_dict(HF_TABLE, model.state_dict(), get, found, source=weights.source)
    model.load_state_dict(state, strict=True, assign=True)
    model.text.reset_buffers()
    model.eval()
    return model.to(device) if device is not None else model


def import_hf_state(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """The core state dict (keys and shapes as ``expected``) for a BAAI/transformers AltCLIP state dict, strictly.

    Args:
        state: the BAAI/transformers state dict (either key spelling).
        expected: the core's state dict (meta tensors will do): the keys and shapes to produce.
        source: what to name in the error.

    Raises:
        ValueError: every missing, unexpected and mis-shaped tensor.
    """
    keys = hf_keys(state)
    found = {key: tuple(state[name].shape) for key, name in keys.items()}
    return import_state_dict(HF_TABLE, expected, lambda key: state[keys[key]], found, source=source)


def state_mismatch(found: dict[str, tuple[int, ...]], state: dict[str, torch.Tensor]) -> Mismatch:
    """How tensor shapes ``found`` differ from the core state dict ``state``.

    Args:
        found: key -> shape, in BAAI/transformers keys or the core's / open_clip's own keys (open_clip's optional
            SigLIP ``logit_bias`` aside).
        state: the core's state dict (meta tensors will do).

    Returns:
        The missing, unexpected and mis-shaped keys (empty when the shapes fit).
    """
    if is_hf_layout(found):
        found = {key: found[name] for key, name in hf_keys(found).items()}
        return compare(foreign_shapes(HF_TABLE, state), found)
    found = {key: shape for key, shape in found.items() if key != "logit_bias"}
    return compare({key: tuple(tensor.shape) for key, tensor in state.items()}, found)


def save_hf_checkpoint(model: nn.Module, folder: str | Path) -> None:
    """Write config.json and model.safetensors (the BAAI key spelling, the model's dtype) into ``folder``,
    atomically, with modes that follow the umask; the folder must exist."""
    folder = Path(folder)
    write_json(folder / "config.json", model.config.to_hf())
    state = export_state_dict(HF_TABLE, {k: v.detach().cpu() for k, v in model.state_dict().items()})
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})


def load_pretrained(
    model_class: type[nn.Module],
    name_or_path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    revision: str | None = None,
) -> nn.Module:
    """``AltCLIP.from_pretrained``: a registry name, hub id or local folder, with its processor attached.

    Args:
        model_class: the class to build (``AltCLIP`` passes itself).
        name_or_path: a registry name (``"AltCLIP"``), a hub id (``"BAAI/AltCLIP"``) or a folder.
        device: where the model goes (default: the CPU).
        dtype: the floating-point dtype of the weights (default: float32).
        revision: the hub revision.

    Raises:
        FileNotFoundError: as :func:`altclip_adapters.model.files.resolve_checkpoint` and :func:`read_config`.
        ValueError: as :func:`load_hf_checkpoint`.
    """
    folder = resolve_checkpoint(name_or_path, revision=revision)
    model = load_hf_checkpoint(model_class, folder, device=device, dtype=dtype)
    model.processor = AltCLIPProcessor.from_pretrained(folder)
    return model


def save_pretrained(model: nn.Module, folder: str | Path) -> None:
    """``AltCLIP.save_pretrained``: the weights and config (:func:`save_hf_checkpoint`), and the processor's files
    (tokenizer, preprocessing) when the model has one."""
    save_hf_checkpoint(model, folder)
    if model.processor is not None:
        model.processor.save_pretrained(folder)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' progress bars (``Loading weights``, ``Writing model shards``) and huggingface_hub's off for the
    block, then back as they were: for our calls into transformers, whose callers print their own progress. The
    switches are process-wide, so another thread loading meanwhile is quiet too."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging

    bars, hub_bars_off = logging.is_progress_bar_enabled(), are_progress_bars_disabled()
    logging.disable_progress_bar()  # huggingface_hub's too
    try:
        yield
    finally:
        if bars:
            logging.enable_progress_bar()  # huggingface_hub's too
        if hub_bars_off:
            disable_progress_bars()
        else:
            enable_progress_bars()
