"""AltCLIP: text tower + vision tower + projections + logit scale."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from altclip_adapters.model._mapping import Mismatch

from altclip_adapters.model.config import AltCLIPConfig
from altclip_adapters.model._text import TextTower
from altclip_adapters.model._vision import VisionTower


@dataclass
class AltCLIPOutput:
    """What :meth:`AltCLIP.forward` returns, as ``transformers.AltCLIPModel`` does.

    Attributes:
        logits_per_image: [images, texts], scaled cosine similarities (``logit_scale.exp()`` times the cosine).
        logits_per_text: [texts, images], its transpose.
        text_embeds: [texts, projection_dim], L2-normalised.
        image_embeds: [images, projection_dim], L2-normalised.
        loss: CLIP's contrastive loss (a scalar), when asked for.
        text_hidden_states: the text encoder's hidden states, embeddings first, when asked for.
        vision_hidden_states: the vision tower's, likewise.
    """

    logits_per_image: torch.Tensor
    logits_per_text: torch.Tensor
    text_embeds: torch.Tensor
    image_embeds: torch.Tensor
    loss: torch.Tensor | None = None
    text_hidden_states: tuple[torch.Tensor, ...] | None = None
    vision_hidden_states: tuple[torch.Tensor, ...] | None = None


def architecture_mismatch(found: dict[str, tuple[int, ...]], config: AltCLIPConfig) -> Mismatch:
    """How a checkpoint's tensor shapes differ from the AltCLIP of ``config`` (``altclip convert --arch``'s check).
    Builds the model on the meta device: no memory, no weights.

    Args:
        found: key -> shape, in any key spelling :mod:`altclip_adapters.model.hf` reads.
        config: the architecture to check against.

    Returns:
        The missing, unexpected and mis-shaped keys (empty when the checkpoint fits).
    """
    from altclip_adapters.model import hf

    with torch.device("meta"):
        state = AltCLIP(config).state_dict()
    return hf.state_mismatch(found, state)


def contrastive_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy over a square similarity matrix [N, N] (row i's match is column i): a
    scalar."""
    labels = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
    return (F.cross_entropy(logits_per_text, labels) + F.cross_entropy(logits_per_text.t(), labels)) / 2


class AltCLIP(nn.Module):
    """The AltCLIP model shared by every adapter. Numbers equal ``transformers.AltCLIPModel`` (fp32, within 1e-5).

    Built empty (random weights) from a config; :meth:`from_pretrained` is the usual way in. ``processor`` is the
    checkpoint's :class:`~altclip_adapters.model.processor.AltCLIPProcessor` once loaded, else None.

    Args:
        config: the architecture.
    """

    def __init__(self, config: AltCLIPConfig):
        super().__init__()
        self.config = config
        self.text = TextTower(config.text)
        self.vision = VisionTower(config.vision)
        self.text_projection = nn.Linear(config.text.project_dim, config.projection_dim, bias=False)
        self.visual_projection = nn.Linear(config.vision.width, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init))
        self.processor = None  # an AltCLIPProcessor, attached by from_pretrained

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        revision: str | None = None,
    ) -> AltCLIP:
        """Load from a registry name (``"AltCLIP"``), a hub id (``"BAAI/AltCLIP"``) or a local folder.

        The checkpoint's tokenizer and preprocessing come along as ``model.processor``. The work is
        :func:`altclip_adapters.model.hf.load_pretrained`'s, given this class to build.

        Args:
            name_or_path: a registry name, a hub id or a folder in the BAAI/transformers layout (``pytorch_model.bin``,
                ``model.safetensors`` or sharded ``*.index.json``, transformers 4 or 5 key spellings).
            device: where the model goes (default: the CPU).
            dtype: the floating-point dtype of the weights (default: float32; ``torch.bfloat16``, ``torch.float16``).
            revision: the hub revision (branch, tag or commit).

        Returns:
            The model in eval mode, with its processor.

        Raises:
            FileNotFoundError: no such folder, name or cached hub id.
            ValueError: a checkpoint whose tensors do not fit the architecture (every missing, unexpected and
                mis-shaped tensor named).
        """
        from altclip_adapters.model import hf  # below the core; imported here so that importing the core stays light

        return hf.load_pretrained(cls, name_or_path, device=device, dtype=dtype, revision=revision)

    def save_pretrained(self, folder: str | Path) -> None:
        """Write a BAAI/AltCLIP-layout folder (config.json, model.safetensors, tokenizer and
        preprocessor files) that ``transformers.AltCLIPModel`` and ``AltCLIPProcessor`` load
        (:func:`altclip_adapters.model.hf.save_pretrained`); every file atomically, modes following the umask.

        Args:
            folder: the folder to write (created if missing); files of the same names are replaced.
        """
        from altclip_adapters.model import hf

        hf.save_pretrained(self, folder)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights."""
        return self.logit_scale.dtype

    @property
    def device(self) -> torch.device:
        """Where the weights are."""
        return self.logit_scale.device

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in the backward pass of both towers to save memory (``enable=False``
        switches it off)."""
        self.vision.grad_checkpointing = enable
        if enable:
            self.text.encoder.activation_checkpointing_enable({"use_reentrant": False})
        else:
            self.text.encoder.activation_checkpointing_disable()

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, normalize: bool = False
    ) -> torch.Tensor:
        """Text embeddings, as ``AltCLIPModel.get_text_features`` gives them.

        Args:
            input_ids: int64 [B, T], as the processor gives them.
            attention_mask: [B, T], 1 for tokens and 0 for padding (default: ``input_ids != pad``).
            normalize: whether to L2-normalise each embedding.

        Returns:
            [B, projection_dim] in the model's dtype; [0, projection_dim] for an empty batch.
        """
        if input_ids.shape[0] == 0:  # the encoder cannot reshape an empty batch (transformers' neither)
            return torch.zeros(0, self.config.projection_dim, dtype=self.dtype, device=self.device)
        pooled, _, _ = self.text(input_ids, attention_mask)
        features = self.text_projection(pooled)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_image(
        self, pixel_values: torch.Tensor, *, normalize: bool = False, interpolate_pos_encoding: bool = False
    ) -> torch.Tensor:
        """Image embeddings, as ``AltCLIPModel.get_image_features`` gives them.

        Args:
            pixel_values: float32 [B, 3, H, W], as the processor gives them.
            normalize: whether to L2-normalise each embedding.
            interpolate_pos_encoding: interpolate the position embedding for an image size other than the
                config's.

        Returns:
            [B, projection_dim] in the model's dtype; [0, projection_dim] for an empty batch.
        """
        if pixel_values.shape[0] == 0:
            return torch.zeros(0, self.config.projection_dim, dtype=self.dtype, device=self.device)
        pooled = self.vision.pool(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        features = self.visual_projection(pooled)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        return_loss: bool = False,
        output_hidden_states: bool = False,
        interpolate_pos_encoding: bool = False,
    ) -> AltCLIPOutput:
        """Both logit matrices (scaled cosine similarities), normalised embeddings and, on request,
        the contrastive loss and both towers' hidden states.

        Args:
            input_ids: int64 [N, T].
            pixel_values: float32 [M, 3, H, W].
            attention_mask: [N, T] (default: ``input_ids != pad``).
            return_loss: compute CLIP's contrastive loss (needs N == M: text i matches image i).
            output_hidden_states: return both towers' hidden states.
            interpolate_pos_encoding: as in :meth:`encode_image`.

        Returns:
            An :class:`AltCLIPOutput`.

        Raises:
            ValueError: ``return_loss`` with N != M.
        """
        text_pooled, _, text_states = self.text(input_ids, attention_mask, output_hidden_states=output_hidden_states)
        if output_hidden_states:
            image_pooled, _, image_states = self.vision(
                pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, output_hidden_states=True
            )
        else:
            image_pooled, image_states = self.vision.pool(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding), None
        text_embeds = F.normalize(self.text_projection(text_pooled), dim=-1)
        image_embeds = F.normalize(self.visual_projection(image_pooled), dim=-1)
        logits_per_text = text_embeds @ image_embeds.t() * self.logit_scale.exp()
        loss = None
        if return_loss:
            if logits_per_text.shape[0] != logits_per_text.shape[1]:
                raise ValueError(
                    f"the contrastive loss needs one text per image; got {logits_per_text.shape[0]} texts "
                    f"and {logits_per_text.shape[1]} images"
                )
            loss = contrastive_loss(logits_per_text)
        return AltCLIPOutput(
            logits_per_image=logits_per_text.t(),
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            loss=loss,
            text_hidden_states=text_states,
            vision_hidden_states=image_states,
        )
