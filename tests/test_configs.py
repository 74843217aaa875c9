"""config.json files as transformers reads them: a missing key takes transformers' class default (issue 10, kind 7)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TEXTS, make_images
from transformers import AltCLIPConfig as HFAltCLIPConfig
from transformers import AltCLIPModel, AltCLIPProcessor, AltCLIPTextConfig, AltCLIPVisionConfig

from altclip_adapters import AltCLIP
from altclip_adapters.model.config import _TEXT_HF_KEYS, _VISION_HF_KEYS, AltCLIPConfig, TextConfig, VisionConfig
from altclip_adapters.model.tiny import make_checkpoint


def assert_same_embeddings(folder) -> AltCLIP:
    """Our model and ``transformers.AltCLIPModel`` load ``folder`` and embed texts and images alike."""
    reference = AltCLIPModel.from_pretrained(folder).eval()
    ours = AltCLIP.from_pretrained(folder)
    batch = AltCLIPProcessor.from_pretrained(folder)(text=TEXTS, images=make_images(2), padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = reference(**batch)
        got = ours(batch["input_ids"], batch["pixel_values"], batch["attention_mask"])
    torch.testing.assert_close(got.text_embeds, expected.text_embeds, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.image_embeds, expected.image_embeds, atol=1e-5, rtol=0)
    return ours


@pytest.mark.parametrize("shape", ["tiny", "m18"])
def test_a_config_written_as_differences_loads_as_transformers_loads_it(tmp_path, shape):
    folder = make_checkpoint(tmp_path / shape, shape, config_style="diff")
    written = json.loads((folder / "config.json").read_text())
    # what transformers 4 left out: keys equal to the AltCLIPTextConfig / AltCLIPVisionConfig defaults
    assert "max_position_embeddings" not in written["text_config"] and "pad_token_id" not in written["text_config"]
    assert "num_channels" not in written["vision_config"] and "logit_scale_init_value" not in written
    assert ("hidden_act" in written["vision_config"]) == (shape == "m18")  # m18's GELU ViT differs from quick_gelu
    assert_same_embeddings(folder)


def test_a_vision_tower_left_at_the_defaults_is_transformers_vit_b32(tmp_path):
    """The issue's file: no patch_size, hidden_size, ... in vision_config, no projection_dim anywhere."""
    folder = make_checkpoint(tmp_path / "b32", "b32", config_style="diff")
    written = json.loads((folder / "config.json").read_text())
    assert set(written["vision_config"]) == {"model_type", "projection_dim"}
    assert "projection_dim" not in written and "project_dim" not in written["text_config"]
    ours = assert_same_embeddings(folder)
    vision = ours.config.vision
    assert (vision.width, vision.layers, vision.heads, vision.patch_size, vision.mlp_dim) == (768, 12, 12, 32, 3072)
    assert ours.config.projection_dim == 768 and ours.config.text.project_dim == 768


def test_legacy_config_dict_keys_override_as_in_transformers(tmp_path):
    """transformers 4.2x wrote ``text_config_dict`` / ``vision_config_dict``; transformers still honours them."""
    folder = make_checkpoint(tmp_path / "legacy", "tiny")
    data = json.loads((folder / "config.json").read_text())
    data["text_config_dict"], data["vision_config_dict"] = data.pop("text_config"), data.pop("vision_config")
    (folder / "config.json").write_text(json.dumps(data))
    assert AltCLIP.from_pretrained(folder).config.vision.patch_size == 8
    assert_same_embeddings(folder)


def test_missing_keys_take_transformers_class_defaults():
    config = AltCLIPConfig.from_hf({"model_type": "altclip"})
    text, vision, top = AltCLIPTextConfig(), AltCLIPVisionConfig(), HFAltCLIPConfig()
    assert {ours: getattr(config.text, ours) for ours in _TEXT_HF_KEYS} == {o: getattr(text, k) for o, k in _TEXT_HF_KEYS.items()}
    assert {ours: getattr(config.vision, ours) for ours in _VISION_HF_KEYS} == {o: getattr(vision, k) for o, k in _VISION_HF_KEYS.items()}
    assert (config.projection_dim, config.logit_scale_init) == (top.projection_dim, top.logit_scale_init_value)


def test_registry_cards_keep_baai_defaults():
    """``from_dict`` (our own cards) is not a transformers file: its defaults stay BAAI/AltCLIP's ViT-L/14."""
    config = AltCLIPConfig.from_dict({})
    assert config.vision == VisionConfig() and (config.vision.patch_size, config.vision.width) == (14, 1024)
    assert config.text == TextConfig()


@pytest.mark.parametrize(
    "data, message",
    [
        ({"model_type": "clip"}, "expected 'altclip'"),
        ({"model_type": "altclip", "vision_config": {"hidden_size": 33}}, "not a valid transformers AltCLIP config"),
        ({"model_type": "altclip", "text_config": {"num_hidden_layers": "two"}}, "num_hidden_layers"),
    ],
)
def test_configs_transformers_rejects_are_rejected(data, message):
    with pytest.raises(ValueError, match=message):
        AltCLIPConfig.from_hf(data)
