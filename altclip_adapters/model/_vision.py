"""Vision tower: a CLIP ViT built from timm's VisionTransformer parts."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from altclip_adapters.model.config import VisionConfig


class VisionTower(nn.Module):
    """Patch embedding + class token + position embedding, pre-LN, blocks, post-LN on the class token.

    ``self.vit`` is a timm ``VisionTransformer`` (no head); its parameter names are the core's
    vision layout. The forward pass is written here so that position embeddings interpolate
    exactly as ``transformers`` does (bicubic, no antialiasing) and hidden states can be returned.
    """

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.vit = VisionTransformer(
            img_size=config.image_size,
            patch_size=config.patch_size,
            in_chans=config.channels,
            num_classes=0,
            global_pool="token",
            embed_dim=config.width,
            depth=config.layers,
            num_heads=config.heads,
            mlp_ratio=config.mlp_dim / config.width,
            qkv_bias=True,
            pre_norm=True,
            norm_layer=partial(nn.LayerNorm, eps=config.layer_norm_eps),
            act_layer=config.act,
            weight_init="skip",
        )
        # timm's "skip" leaves these two empty; initialise them as transformers does (Linear layers keep torch's init)
        nn.init.normal_(self.vit.cls_token, std=config.width**-0.5)
        nn.init.normal_(self.vit.pos_embed, std=0.02)
        self.grad_checkpointing = False

    @property
    def width(self) -> int:
        return self.config.width

    def position_embedding(self, height: int, width: int) -> torch.Tensor:
        """The position embedding for an image of ``height`` x ``width`` pixels, interpolated if needed."""
        pos = self.vit.pos_embed
        grid = self.config.image_size // self.config.patch_size
        new_h, new_w = height // self.config.patch_size, width // self.config.patch_size
        if (new_h, new_w) == (grid, grid):
            return pos
        patch_pos = pos[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        patch_pos = nn.functional.interpolate(patch_pos, size=(new_h, new_w), mode="bicubic", align_corners=False)
        return torch.cat([pos[:, :1], patch_pos.permute(0, 2, 3, 1).reshape(1, new_h * new_w, -1)], dim=1)

    def embed(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool) -> torch.Tensor:
        """The first block's input [B, 1 + patches, width]: patches, class token, position embedding, pre-LN."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.channels:
            raise ValueError(
                f"pixel_values must have shape [batch, {self.config.channels}, height, width]; got {tuple(pixel_values.shape)}"
            )
        height, width = pixel_values.shape[-2:]
        size = self.config.image_size
        if not interpolate_pos_encoding and (height, width) != (size, size):
            raise ValueError(
                f"Input image size ({height}*{width}) doesn't match model ({size}*{size}); "
                "pass interpolate_pos_encoding=True to use other sizes"
            )
        vit = self.vit
        x = vit.patch_embed.proj(pixel_values.to(vit.patch_embed.proj.weight.dtype)).flatten(2).transpose(1, 2)
        x = torch.cat([vit.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return vit.norm_pre(x + self.position_embedding(height, width))

    def run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training:
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward(
        self,
        pixel_values: torch.Tensor,
        *,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Returns (pooled [B, width] after post-LN, last hidden state [B, T, width], hidden states or None).

        Hidden states follow transformers: the input to the first block, then each block's output.
        """
        x = self.embed(pixel_values, interpolate_pos_encoding)
        states = [x] if output_hidden_states else None
        for block in self.vit.blocks:
            x = self.run_block(block, x)
            if states is not None:
                states.append(x)
        return self.vit.norm(x[:, 0]), x, tuple(states) if states is not None else None

    def pool(self, pixel_values: torch.Tensor, *, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """The pooled output of :meth:`forward` alone [B, width]; the last block computes the class token only."""
        x = self.embed(pixel_values, interpolate_pos_encoding)
        *blocks, last = self.vit.blocks
        for block in blocks:
            x = self.run_block(block, x)
        return self.vit.norm(self.run_block(partial(class_token_block, last), x)[:, 0])


def class_token_block(block: Block, x: torch.Tensor) -> torch.Tensor:
    """``block(x)[:, :1]`` for the blocks this tower builds (no dropout, layer scale, qk-norm or
    gate): the class token's query attends to every token's key and value; the attention output,
    residuals and MLP run on the class token alone."""
    attn = block.attn
    batch, tokens, _ = x.shape
    qkv = attn.qkv(block.norm1(x)).view(batch, tokens, 3, attn.num_heads, -1)
    q = qkv[:, :1, 0].transpose(1, 2)
    k, v = qkv[:, :, 1:].permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, 1, attn.attn_dim)
    x = x[:, :1] + attn.proj(out)
    return x + block.mlp(block.norm2(x))
