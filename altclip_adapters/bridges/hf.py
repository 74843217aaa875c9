"""Bridge between the Hugging Face AltCLIP layout (transformers / BAAI checkpoints) and the core.

The table below is the whole mapping; ``mapping.py`` applies it in both directions.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..config import AltCLIPConfig
from ..core.model import AltCLIP
from ..atomic import honour_umask
from .files import open_weights
from .mapping import Rule, export_state_dict, import_state_dict, rule

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


def canonical_key(key: str) -> str:
    """A checkpoint key in the BAAI spelling."""
    for pattern, repl in _SPELLING:
        key = pattern.sub(repl, key)
    return key


def read_config(folder: Path) -> AltCLIPConfig:
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not an AltCLIP checkpoint folder")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    return AltCLIPConfig.from_hf(data)


def load_hf_checkpoint(
    folder: str | Path, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> AltCLIP:
    """Build the core from a folder in the BAAI/transformers layout (config.json + weights)."""
    folder = Path(folder)
    config = read_config(folder)
    weights = open_weights(folder)
    keys = {canonical_key(k): k for k in weights.keys() if canonical_key(k) not in IGNORED}
    config.text.transformation_pre = "text_model.transformation_pre.weight" in keys
    return build_from_weights(config, HF_TABLE, keys, weights, device=device, dtype=dtype)


def build_from_weights(config, table, keys, weights, *, device=None, dtype=None) -> AltCLIP:
    """The core for ``config`` with every tensor taken from ``weights`` through ``table``, strictly.

    ``keys`` maps the table's spelling of each available key to the file's spelling.
    """
    with torch.device("meta"):
        model = AltCLIP(config)
    dtype = dtype or torch.float32

    def get(key: str) -> torch.Tensor:
        tensor = weights.get(keys[key])
        return tensor.to(dtype) if tensor.is_floating_point() else tensor

    state = import_state_dict(table, model.state_dict(), get, set(keys), source=weights.source)
    model.load_state_dict(state, strict=True, assign=True)
    model.text.reset_buffers()
    model.eval()
    return model.to(device) if device is not None else model


def save_hf_checkpoint(model: AltCLIP, folder: str | Path) -> None:
    """Write config.json and model.safetensors in the BAAI/AltCLIP layout (file modes follow the umask)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(model.config.to_hf(), indent=2) + "\n")
    state = export_state_dict(HF_TABLE, {k: v.detach().cpu() for k, v in model.state_dict().items()})
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    honour_umask(folder / "model.safetensors")
