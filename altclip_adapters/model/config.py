"""Tower configurations: read from a Hugging Face AltCLIP ``config.json`` or a registry card."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

_TEXT_HF_KEYS = {  # our field -> AltCLIPTextConfig key
    "vocab_size": "vocab_size",
    "width": "hidden_size",
    "layers": "num_hidden_layers",
    "heads": "num_attention_heads",
    "mlp_dim": "intermediate_size",
    "max_positions": "max_position_embeddings",
    "type_vocab_size": "type_vocab_size",
    "pad_token_id": "pad_token_id",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
    "layer_norm_eps": "layer_norm_eps",
    "act": "hidden_act",
    "project_dim": "project_dim",
}
_VISION_HF_KEYS = {  # our field -> AltCLIPVisionConfig key
    "image_size": "image_size",
    "patch_size": "patch_size",
    "width": "hidden_size",
    "layers": "num_hidden_layers",
    "heads": "num_attention_heads",
    "mlp_dim": "intermediate_size",
    "channels": "num_channels",
    "layer_norm_eps": "layer_norm_eps",
    "act": "hidden_act",
}


OPEN_CLIP_KEY = "altclip"  # the key of an open_clip model config that holds the AltCLIP architecture (to_dict)


@dataclass
class TextConfig:
    """XLM-RoBERTa encoder plus AltCLIP's text head (defaults: BAAI/AltCLIP).

    Attributes:
        vocab_size: tokens in the XLM-R vocabulary.
        width: hidden size of the encoder.
        layers: encoder layers.
        heads: attention heads per layer.
        mlp_dim: inner size of each layer's MLP.
        max_positions: position embeddings (514: 512 tokens plus XLM-R's padding offset).
        type_vocab_size: token type embeddings.
        pad_token_id: the padding token's id (also where XLM-R's positions start counting).
        bos_token_id: the ``<s>`` token's id.
        eos_token_id: the ``</s>`` token's id.
        layer_norm_eps: the encoder's LayerNorm epsilon.
        act: the encoder MLP's activation (a transformers activation name).
        project_dim: output size of the head's ``transformation`` layer, the input of ``text_projection``.
        transformation_pre: AltCLIP-m18's extra head on the second-to-last layer.
    """

    vocab_size: int = 250002
    width: int = 1024
    layers: int = 24
    heads: int = 16
    mlp_dim: int = 4096
    max_positions: int = 514
    type_vocab_size: int = 1
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    layer_norm_eps: float = 1e-5
    act: str = "gelu"
    project_dim: int = 768
    transformation_pre: bool = False


@dataclass
class VisionConfig:
    """CLIP ViT (defaults: ViT-L/14 at 224, as in BAAI/AltCLIP; these fill registry cards, while a
    ``config.json`` takes transformers' defaults, see :meth:`AltCLIPConfig.from_hf`).

    Attributes:
        image_size: input height and width in pixels.
        patch_size: patch height and width in pixels.
        width: hidden size of the transformer.
        layers: transformer blocks.
        heads: attention heads per block.
        mlp_dim: inner size of each block's MLP.
        channels: input channels (3: RGB).
        layer_norm_eps: the LayerNorm epsilon.
        act: the MLP's activation (``quick_gelu`` for OpenAI's ViTs, ``gelu`` for AltCLIP-m18's).
    """

    image_size: int = 224
    patch_size: int = 14
    width: int = 1024
    layers: int = 24
    heads: int = 16
    mlp_dim: int = 4096
    channels: int = 3
    layer_norm_eps: float = 1e-5
    act: str = "quick_gelu"


@dataclass
class AltCLIPConfig:
    """The whole model: both towers, the shared embedding size and the initial logit scale.

    Attributes:
        text: the text tower.
        vision: the vision tower.
        projection_dim: size of the shared embedding space (768 for every released AltCLIP).
        logit_scale_init: the initial log of the logit scale (2.6592 = log(1 / 0.07), CLIP's).
    """

    text: TextConfig = field(default_factory=TextConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    projection_dim: int = 768
    logit_scale_init: float = 2.6592

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AltCLIPConfig:
        """Build from our own dict form (as in registry cards and ``to_dict``).

        Args:
            data: ``{"text": {...}, "vision": {...}, "projection_dim": ..., "logit_scale_init": ...}``, each key
                optional (a missing one takes the default above).

        Returns:
            The config.

        Raises:
            TypeError: a tower dict holds a key the tower's dataclass does not have.
        """
        return cls(
            text=TextConfig(**data.get("text", {})),
            vision=VisionConfig(**data.get("vision", {})),
            projection_dim=data.get("projection_dim", 768),
            logit_scale_init=data.get("logit_scale_init", 2.6592),
        )

    def to_dict(self) -> dict[str, Any]:
        """Our own dict form (what :meth:`from_dict` reads): nested plain dicts, JSON-serialisable."""
        return asdict(self)

    def to_open_clip(self, tokenizer: str, context_length: int) -> dict[str, Any]:
        """open_clip's model config for this architecture (what ``open_clip_config.json`` holds as ``model_cfg``).

        Args:
            tokenizer: a hub id or a folder that open_clip's ``HFTokenizer`` loads.
            context_length: the tokenizer's padded length in tokens.

        Returns:
            open_clip's keys (``embed_dim``, ``custom_text``, ``vision_cfg``, ``text_cfg``) plus the architecture
            itself under :data:`OPEN_CLIP_KEY`, which is what the registration dispatches on.
        """
        return {
            "embed_dim": self.projection_dim,
            "custom_text": True,  # sends open_clip's create_model to CustomTextCLIP, where the dispatch sits
            "vision_cfg": {"image_size": self.vision.image_size},
            "text_cfg": {"context_length": context_length, "vocab_size": self.text.vocab_size,
                         "hf_tokenizer_name": tokenizer},
            OPEN_CLIP_KEY: self.to_dict(),
        }

    @classmethod
    def from_hf(cls, data: dict[str, Any]) -> AltCLIPConfig:
        """Build from a transformers AltCLIP ``config.json`` dict, read as ``transformers.AltCLIPConfig`` reads it.

        A key the file omits takes the default of transformers' ``AltCLIPTextConfig`` / ``AltCLIPVisionConfig`` /
        ``AltCLIPConfig`` (transformers 4 wrote sub-configs as differences from those defaults; the vision
        defaults are a ViT-B/32, not BAAI/AltCLIP's ViT-L/14), and the legacy ``text_config_dict`` /
        ``vision_config_dict`` keys override as they do there.

        Args:
            data: the parsed ``config.json``.

        Returns:
            The config.

        Raises:
            ValueError: ``model_type`` is not ``"altclip"``, or transformers rejects the config.
        """
        from huggingface_hub.errors import StrictDataclassError
        from transformers import AltCLIPConfig as HFAltCLIPConfig

        if data.get("model_type") != "altclip":
            raise ValueError(
                f"config.json has model_type={data.get('model_type')!r}; expected 'altclip' (an AltCLIPModel checkpoint)"
            )
        try:
            hf = HFAltCLIPConfig.from_dict(data)
        except (StrictDataclassError, TypeError, ValueError) as e:
            raise ValueError(f"config.json is not a valid transformers AltCLIP config: {e}") from e
        text, vision = hf.text_config, hf.vision_config
        return cls(
            text=TextConfig(**{ours: getattr(text, key) for ours, key in _TEXT_HF_KEYS.items()}),
            vision=VisionConfig(**{ours: getattr(vision, key) for ours, key in _VISION_HF_KEYS.items()}),
            projection_dim=hf.projection_dim,
            logit_scale_init=hf.logit_scale_init_value,
        )

    def to_hf(self) -> dict[str, Any]:
        """The transformers ``AltCLIPConfig`` dict for this model (what ``config.json`` holds, every key written)."""
        text = {hf: getattr(self.text, ours) for ours, hf in _TEXT_HF_KEYS.items()}
        vision = {hf: getattr(self.vision, ours) for ours, hf in _VISION_HF_KEYS.items()}
        return {
            "architectures": ["AltCLIPModel"],
            "model_type": "altclip",
            "projection_dim": self.projection_dim,
            "logit_scale_init_value": self.logit_scale_init,
            "text_config": {"model_type": "altclip_text_model", **text},
            "vision_config": {"model_type": "altclip_vision_model", "projection_dim": self.projection_dim, **vision},
        }
