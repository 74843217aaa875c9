"""Text tower: an XLM-RoBERTa encoder (transformers) plus AltCLIP's head."""

from __future__ import annotations

import torch
from torch import nn
from transformers import XLMRobertaConfig, XLMRobertaModel

from altclip_adapters.model.config import TextConfig


def xlmr_config(config: TextConfig) -> XLMRobertaConfig:
    """The transformers XLM-R config for the encoder part of the text tower."""
    return XLMRobertaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.width,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        intermediate_size=config.mlp_dim,
        max_position_embeddings=config.max_positions,
        type_vocab_size=config.type_vocab_size,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        layer_norm_eps=config.layer_norm_eps,
        hidden_act=config.act,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="sdpa",
    )


class TextTower(nn.Module):
    """XLM-R encoder -> ``pre_ln`` -> ``transformation`` (hidden -> project_dim) on token 0 (CLS).

    ``transformation_pre`` (AltCLIP-m18 only) is the head FlagAI applies to the second-to-last
    layer; it is loaded and kept, and used by :meth:`pre_features`.
    """

    def __init__(self, config: TextConfig):
        super().__init__()
        self.config = config
        self.encoder = XLMRobertaModel(xlmr_config(config), add_pooling_layer=False)
        self.pre_ln = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.transformation = nn.Linear(config.width, config.project_dim)
        self.transformation_pre = nn.Linear(config.width, config.project_dim) if config.transformation_pre else None

    def reset_buffers(self) -> None:
        """Recreate the encoder's non-persistent index buffers (after loading onto the meta device)."""
        emb = self.encoder.embeddings
        device = emb.word_embeddings.weight.device
        emb.position_ids = torch.arange(self.config.max_positions, device=device).expand((1, -1))
        emb.token_type_ids = torch.zeros_like(emb.position_ids)

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, output_hidden_states: bool = False
    ):
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must have shape [batch, tokens]; got {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = input_ids.ne(self.config.pad_token_id).long()
        return self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Returns (pooled [B, project_dim], last hidden state [B, T, width], hidden states or None).

        ``attention_mask`` defaults to ``input_ids != pad_token_id``.
        """
        out = self.encode(input_ids, attention_mask, output_hidden_states)
        last = out.last_hidden_state
        # LayerNorm and Linear act per token, so heading only token 0 equals heading all and taking token 0.
        pooled = self.transformation(self.pre_ln(last[:, 0]))
        return pooled, last, out.hidden_states

    def pre_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """AltCLIP-m18's ``transformation_pre`` head over the second-to-last layer's states.

        Args:
            input_ids: int64 [B, T].
            attention_mask: [B, T] (default: ``input_ids != pad_token_id``).

        Returns:
            [B, T, project_dim], every token's (not only the CLS token's).

        Raises:
            ValueError: the checkpoint has no such head (only AltCLIP-m18 carries one).
        """
        if self.transformation_pre is None:
            raise ValueError("this checkpoint has no transformation_pre head (only AltCLIP-m18 carries one)")
        hidden = self.encode(input_ids, attention_mask, output_hidden_states=True).hidden_states
        return self.transformation_pre(hidden[-2])
