"""AltCLIP as an open_clip model: the model class, and conversions between open_clip and BAAI folders.

open_clip builds :class:`AltCLIPOpenCLIP` through the registration in
:mod:`altclip_adapters.integrations._open_clip_registration` (names, configs, tags, the dispatch), which
imports this module, and with it the core, on the first AltCLIP build. Everything else (``hf-hub:`` /
``local-dir:`` schemas, tags, precision, checkpoint loading, transforms, ``HFTokenizer``, ``save_for_hf``)
is open_clip's own code.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from open_clip.model import set_model_preprocess_cfg
from open_clip.tokenizer import HFTokenizer
from open_clip.transform import PreprocessCfg
from torch import nn

from altclip_adapters.model import registry
from altclip_adapters.atomic import honour_umask
from altclip_adapters.model.files import open_weights, resolve_checkpoint, write_slow_tokenizer_files
from altclip_adapters.model.hf import import_hf_state, is_hf_layout, read_config, save_hf_checkpoint
from altclip_adapters.model.config import AltCLIPConfig
from altclip_adapters.model.core import AltCLIP
from altclip_adapters.model.processor import DEFAULT_CONTEXT_LENGTH, AltCLIPProcessor, ImageTransform

__all__ = ["AltCLIPOpenCLIP", "model_config", "save_for_open_clip", "save_hf"]

_INTERPOLATION = {"bicubic": 3, "bilinear": 2}  # open_clip name -> PIL code in preprocessor configs


def model_config(source: str | Path) -> dict[str, Any]:
    """open_clip's model config (what ``open_clip_config.json`` holds as ``model_cfg``) for an AltCLIP checkpoint.

    Args:
        source: a registry name (``"AltCLIP"``; the tokenizer is then the hub repo's) or a checkpoint folder in the
            BAAI/transformers layout (the tokenizer is then the folder's).

    Returns:
        open_clip's keys plus the architecture under ``"altclip"``, which the registration dispatches on.

    Raises:
        FileNotFoundError: ``source`` is neither a registry name nor a folder.
    """
    card = registry.find(str(source))
    if card is not None:
        return card.open_clip_config()
    folder = Path(source)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{str(source)!r} is neither an AltCLIP registry name ({', '.join(registry.names())}) "
            "nor a checkpoint folder"
        )
    return read_config(folder).to_open_clip(str(folder.resolve()), DEFAULT_CONTEXT_LENGTH)


def _params(item: nn.Module | nn.Parameter) -> list[nn.Parameter]:
    return list(item.parameters()) if isinstance(item, nn.Module) else [item]


class AltCLIPOpenCLIP(AltCLIP):
    """The shared core under open_clip's model contract; its state dict is the core's.

    Built by ``open_clip.create_model`` from a model config (see :func:`model_config`), with open_clip's
    keyword arguments. It also loads BAAI/transformers AltCLIP state dicts (``load_state_dict`` maps them through
    the HF bridge), so ``pretrained=`` may name such a ``.bin`` / ``.safetensors`` file. ``encode_image``,
    ``encode_text``, ``forward``, ``lock_image_tower``, ``lock_text_tower`` and ``set_grad_checkpointing`` behave
    as for open_clip's own models.

    Raises:
        ValueError: (on construction) an ``embed_dim`` other than the architecture's ``projection_dim``, or patch
            dropout, which AltCLIP does not support.
    """

    def __init__(
        self,
        embed_dim: int,
        vision_cfg: dict[str, Any],
        text_cfg: dict[str, Any],
        altclip: dict[str, Any],
        quick_gelu: bool = False,
        init_logit_scale: float | None = None,
        init_logit_bias: float | None = None,
        cast_dtype: torch.dtype | None = None,  # open_clip's fp16/bf16: see _precision()
        output_dict: bool = False,
    ):
        config = AltCLIPConfig.from_dict(altclip)
        if embed_dim != config.projection_dim:
            raise ValueError(f"embed_dim {embed_dim} differs from the AltCLIP projection_dim {config.projection_dim}")
        if vision_cfg.get("patch_dropout"):
            raise ValueError("AltCLIP does not support patch dropout (force_patch_dropout / vision_cfg.patch_dropout)")
        if quick_gelu:
            config.vision.act = "quick_gelu"
        if init_logit_scale is not None:
            config.logit_scale_init = float(init_logit_scale)
        super().__init__(config)
        self.logit_bias = nn.Parameter(torch.tensor(float(init_logit_bias))) if init_logit_bias is not None else None
        self.output_dict = output_dict
        self.context_length = text_cfg.get("context_length", DEFAULT_CONTEXT_LENGTH)
        self.vocab_size = config.text.vocab_size
        image_size = vision_cfg.get("image_size", config.vision.image_size)
        size = tuple(image_size) if isinstance(image_size, (tuple, list)) else (image_size, image_size)
        # another size (force_image_size) interpolates the position embedding, as transformers does
        self._interpolate = size != (config.vision.image_size, config.vision.image_size)
        self.vision.image_size = image_size
        set_model_preprocess_cfg(self, asdict(PreprocessCfg(size=image_size)))

    @property
    def visual(self) -> nn.Module:
        """The vision tower, carrying open_clip's ``image_size`` and ``preprocess_cfg``."""
        return self.vision

    def _precision(self) -> AbstractContextManager:
        """open_clip's fp16/bf16 cast Linear weights and keep norms and embeddings in fp32: run those mixed
        weights under autocast. fp32 and pure_fp16/pure_bf16 weights run as they are."""
        low = self.text_projection.weight.dtype
        if low != self.text.pre_ln.weight.dtype:
            return torch.autocast(self.device.type, dtype=low)
        return nullcontext()

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Image embeddings [B, embed_dim] for pixel values [B, 3, H, W] (open_clip's transform's output)."""
        with self._precision():
            return super().encode_image(image, normalize=normalize, interpolate_pos_encoding=self._interpolate)

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Text embeddings [B, embed_dim] for token ids [B, T] padded with the pad id (the attention mask is
        derived from it), as open_clip's tokenizer gives them."""
        with self._precision():
            return super().encode_text(text, normalize=normalize)

    def forward(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None):
        """Normalised features and the logit scale (and bias), as a tuple or, with ``output_dict``, a dict."""
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        logit_scale = self.logit_scale.exp()
        if self.output_dict:
            out = {"image_features": image_features, "text_features": text_features, "logit_scale": logit_scale}
            if self.logit_bias is not None:
                out["logit_bias"] = self.logit_bias
            return out
        if self.logit_bias is not None:
            return image_features, text_features, logit_scale, self.logit_bias
        return image_features, text_features, logit_scale

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        """Freeze the vision tower and its projection except the last ``unlocked_groups`` groups
        (grouped as open_clip's VisionTransformer: stem, each block, last block + norm, projection).
        ``freeze_bn_stats`` is accepted for open_clip_train; a ViT has no batch norm."""
        vit = self.vision.vit
        groups = [
            [vit.patch_embed, vit.cls_token, vit.pos_embed, vit.norm_pre],
            *([block] for block in vit.blocks[:-1]),
            [vit.blocks[-1], vit.norm],
            [self.visual_projection],
        ]
        for group in groups:
            for item in group:
                for param in _params(item):
                    param.requires_grad = False
        for group in groups[len(groups) - unlocked_groups :] if unlocked_groups else []:
            for item in group:
                for param in _params(item):
                    param.requires_grad = True

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """Freeze the XLM-R encoder except its last ``unlocked_layers`` layers, as open_clip's
        HFTextEncoder does; the AltCLIP head and ``text_projection`` stay trainable."""
        encoder = self.text.encoder
        modules = [encoder.embeddings, *encoder.encoder.layer]
        for module in modules[: len(modules) - unlocked_layers]:
            for name, param in module.named_parameters():
                param.requires_grad = (not freeze_layer_norm) if "LayerNorm" in name.split(".") else False

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load this model's own state dict or a BAAI/transformers AltCLIP one (mapped strictly)."""
        if is_hf_layout(state_dict):
            state_dict = self._import_hf(state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _import_hf(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        own = {key: state[key] for key in ("logit_bias",) if key in state}  # added by open_clip for SigLIP training
        foreign = {key: tensor for key, tensor in state.items() if key not in own}
        expected = {k: v for k, v in self.state_dict().items() if k not in ("logit_bias",)}
        return {**import_hf_state(foreign, expected, source="a BAAI/transformers AltCLIP checkpoint"), **own}


def save_hf(model: AltCLIPOpenCLIP, tokenizer: HFTokenizer, folder: str | Path) -> Path:
    """Write an open_clip AltCLIP (e.g. fine-tuned with open_clip_train) as a BAAI/AltCLIP-layout folder that
    ``transformers.AltCLIPModel`` and ``AltCLIPProcessor`` load.

    Args:
        model: an AltCLIP built by open_clip.
        tokenizer: its open_clip tokenizer (``open_clip.get_tokenizer("AltCLIP")``).
        folder: where to write (created if missing).

    Returns:
        ``folder`` as a ``Path``.

    Raises:
        TypeError: ``model`` is not an open_clip AltCLIP.
        ValueError: the model has a SigLIP ``logit_bias``, which the BAAI/AltCLIP layout cannot hold.
    """
    if not isinstance(model, AltCLIPOpenCLIP):
        raise TypeError(f"expected an open_clip AltCLIP model; got {type(model).__name__}")
    if model.logit_bias is not None:
        raise ValueError("this model has a SigLIP logit_bias, which the BAAI/AltCLIP layout cannot hold")
    folder = Path(folder)
    save_hf_checkpoint(model, folder)
    pp, size = model.visual.preprocess_cfg, model.config.vision.image_size
    transform = ImageTransform(
        shortest_edge=size,
        crop_size=(size, size),
        resample=_INTERPOLATION.get(pp["interpolation"], 3),
        mean=tuple(pp["mean"]),
        std=tuple(pp["std"]),
    )
    AltCLIPProcessor(tokenizer.tokenizer, transform, model.context_length).save_pretrained(folder)
    return folder


def save_for_open_clip(source: str | Path, folder: str | Path) -> Path:
    """Write an AltCLIP checkpoint as an open_clip folder (``save_for_hf`` layout).

    Args:
        source: a registry name, a hub id or a folder in the BAAI/transformers layout.
        folder: where to write (created if missing).

    Returns:
        ``folder`` as a ``Path``: ``create_model('local-dir:<folder>')`` loads it, and so does ``'hf-hub:<repo>'``
        once the folder is uploaded. It also holds the BAAI tokenizer file set.

    Raises:
        FileNotFoundError: ``source`` cannot be had (see ``AltCLIP.from_pretrained``).
        ValueError: ``source`` is a file, or its tensors do not fit its architecture.
    """
    from open_clip.push_to_hf_hub import save_for_hf

    checkpoint = resolve_checkpoint(source)
    config = model_config(source if registry.find(str(source)) else checkpoint)
    model = AltCLIPOpenCLIP(**{k: v for k, v in config.items() if k != "custom_text"})
    weights = open_weights(checkpoint)
    model.load_state_dict({key: weights.get(key) for key in weights.keys()})
    transform = AltCLIPProcessor.from_pretrained(checkpoint).image_transform
    interpolation = {code: name for name, code in _INTERPOLATION.items()}[transform.resample]
    set_model_preprocess_cfg(
        model,
        {
            **model.visual.preprocess_cfg,
            "mean": list(transform.mean),
            "std": list(transform.std),
            "interpolation": interpolation,
        },
    )
    tokenizer = HFTokenizer(str(checkpoint), context_length=config["text_cfg"]["context_length"])
    save_for_hf(model, tokenizer, config, folder)
    folder = Path(folder)
    write_slow_tokenizer_files(tokenizer.tokenizer, folder)  # the BAAI file set, as AltCLIPProcessor writes it
    for weights in folder.glob("*.safetensors"):  # safetensors writes mode 0600 whatever the umask
        honour_umask(weights)
    return folder
