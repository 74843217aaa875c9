"""Parity at the real BAAI/AltCLIP tower shapes (XLM-R large + ViT-L/14, small vocabulary): slow, runs in CI."""

from __future__ import annotations

import pytest
import torch
from conftest import make_images
from transformers import AltCLIPModel, AltCLIPProcessor

from altclip_adapters import AltCLIP
from altclip_adapters.model.tiny import make_checkpoint


@pytest.mark.slow
def test_parity_at_full_baai_shapes(tmp_path):
    folder = make_checkpoint(tmp_path / "full", "full", "bin")
    texts = ["a photo of a cat", "一只狗的照片"]
    images = make_images(2)
    with torch.no_grad():
        ref = AltCLIPModel.from_pretrained(folder).eval()
        batch = AltCLIPProcessor.from_pretrained(folder)(text=texts, images=images, padding=True, return_tensors="pt")
        expected = ref(**batch, return_loss=True)
        del ref
        ours = AltCLIP.from_pretrained(folder)
        assert ours.config.vision.width == 1024 and ours.config.text.layers == 24 and ours.config.vision.image_size == 224
        got = ours(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], return_loss=True)
    torch.testing.assert_close(got.text_embeds, expected.text_embeds, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.image_embeds, expected.image_embeds, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.logits_per_image, expected.logits_per_image, atol=1e-3, rtol=0)
    torch.testing.assert_close(got.loss, expected.loss, atol=1e-5, rtol=0)
