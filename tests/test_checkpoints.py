"""Checkpoint resolution (local, registry, hub cache) and strict, clear loading errors."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from altclip_adapters import AltCLIP, AltCLIPConfig

from altclip_adapters.model import registry

REGISTRY = Path(__file__).parents[1] / "registry"  # the cards as written in the repository (a wheel ships them as altclip_adapters/cards)


def copy(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / "copy")


def edit_weights(folder, change):
    path = folder / "model.safetensors"
    state = load_file(path)
    change(state)
    save_file(state, path)


def test_missing_folder_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a local folder, a registry name"):
        AltCLIP.from_pretrained(tmp_path / "nowhere" / "at-all")


def test_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        AltCLIP.from_pretrained(tmp_path)


def test_file_instead_of_folder(tiny_dir):
    with pytest.raises(ValueError, match="is a file"):
        AltCLIP.from_pretrained(tiny_dir / "model.safetensors")


def test_wrong_model_type(tiny_dir, tmp_path):
    folder = copy(tiny_dir, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "clip"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model_type='clip'"):
        AltCLIP.from_pretrained(folder)


def test_no_weights(tiny_dir, tmp_path):
    folder = copy(tiny_dir, tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="holds no weights"):
        AltCLIP.from_pretrained(folder)


@pytest.mark.parametrize("fixture, name", [("tiny_dir", "model.safetensors"), ("tiny_bin_dir", "pytorch_model.bin")])
def test_corrupted_weight_file(fixture, name, request, tmp_path):
    folder = copy(request.getfixturevalue(fixture), tmp_path)
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=f"{name} is not a readable checkpoint file"):
        AltCLIP.from_pretrained(folder)


def test_missing_extra_and_misshaped_tensors_are_all_listed(tiny_dir, tmp_path):
    folder = copy(tiny_dir, tmp_path)

    def change(state):
        del state["text_projection.weight"]
        del state["vision_model.encoder.layer.1.self_attn.k_proj.bias"]
        state["text_model.extra_head.weight"] = torch.zeros(2, 2)
        state["text_model.roberta.pooler.dense.weight"] = torch.zeros(2, 2)  # unused by AltCLIP: tolerated

    edit_weights(folder, change)
    with pytest.raises(ValueError) as error:
        AltCLIP.from_pretrained(folder)
    message = str(error.value)
    assert "missing (2): text_projection.weight, vision_model.encoder.layers.1.self_attn.k_proj.bias" in message
    assert "unexpected (1): text_model.extra_head.weight" in message


def test_misshaped_tensor_is_named(tiny_dir, tmp_path):
    folder = copy(tiny_dir, tmp_path)
    edit_weights(folder, lambda state: state.update({"visual_projection.weight": torch.zeros(3, 3)}))
    with pytest.raises(ValueError, match=r"wrong shape \(1\): visual_projection.weight: \(3, 3\) \(expected \(16, 32\)\)"):
        AltCLIP.from_pretrained(folder)


def test_unknown_registry_name_or_hub_id():
    with pytest.raises(KeyError, match="unknown AltCLIP model 'AltCLIP-xx'; known: "):
        registry.card("AltCLIP-xx")


def test_cards_describe_the_released_checkpoints():
    assert set(registry.names()) == {"AltCLIP", "AltCLIP-m9", "AltCLIP-m18"}
    assert registry.card("baai/altclip-m9").name == "AltCLIP-m9"
    assert len(registry.card("AltCLIP-m18").languages) == 18
    for name in registry.names():
        card = registry.card(name)
        config = registry.config(name)
        assert config.text.width == 1024 and config.text.layers == 24 and config.text.vocab_size == 250002
        assert config.projection_dim == card.projection_dim == (1024 if name == "AltCLIP-m18" else 768)
        assert card.tokenizer.context_length == 77 and card.preprocessing.center_crop == 224
        raw = json.loads((REGISTRY / f"{name}.json").read_text())
        assert card.hub.repo_id == raw["hub"]["repo_id"]
        assert card.preprocessing.mean == tuple(raw["preprocessing"]["mean"])
        assert config == AltCLIPConfig.from_dict(raw["architecture"]) and raw["projection_dim"] == card.projection_dim


def test_cards_are_frozen_and_configs_are_copies():
    card = registry.card("AltCLIP")
    with pytest.raises(dataclasses.FrozenInstanceError):
        card.name = "other"
    config = registry.config("AltCLIP")
    config.text.transformation_pre = True
    assert registry.config("AltCLIP").text.transformation_pre is False


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(extra=1), "card.json: unknown key(s) extra"),
        (lambda d: d.pop("hub"), "card.json: missing key(s) hub"),
        (lambda d: d["hub"].pop("repo_id"), "card.json.hub: missing key(s) repo_id"),
        (lambda d: d["tokenizer"].update(context_length="77"),
         "card.json.tokenizer.context_length: expected int, got '77'"),
        (lambda d: d["preprocessing"].update(mean=0.5), "card.json.preprocessing.mean: expected a list, got 0.5"),
        (lambda d: d["architecture"]["text"].update(depth=3), "card.json.architecture: "),
        (lambda d: d.update(projection_dim=512),
         "card.json: projection_dim 512 differs from architecture.projection_dim 768"),
    ],
)
def test_a_bad_card_is_named(change, message):
    data = json.loads((REGISTRY / "AltCLIP.json").read_text())
    change(data)
    with pytest.raises(ValueError, match=re.escape(message)):
        registry.parse_card(data, "card.json")


def fake_hub_cache(cache, repo_id, folder, commit="0123456789abcdef0123456789abcdef01234567"):
    """Lay out ``folder`` as huggingface_hub's cache of ``repo_id`` at revision main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


LOAD = """
import sys, torch
from altclip_adapters import AltCLIP
model = AltCLIP.from_pretrained(sys.argv[1], revision=sys.argv[2] if len(sys.argv) > 2 else None)
ids = model.processor.tokenize(["a photo of a cat"])["input_ids"]
print(repr(model.encode_text(ids).sum().item()))
"""


def run_offline(cache, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent / "hf-home")}
    return subprocess.run([sys.executable, "-c", LOAD, *args], env=env, capture_output=True, text=True, timeout=300)


def test_registry_name_and_hub_id_load_from_the_offline_hub_cache(tiny_bin_dir, tiny_dir, tmp_path):
    cache = tmp_path / "hub"
    fake_hub_cache(cache, "BAAI/AltCLIP", tiny_bin_dir)  # the real repo ships pytorch_model.bin
    with torch.no_grad():
        model = AltCLIP.from_pretrained(tiny_dir)
        expected = model.encode_text(model.processor.tokenize(["a photo of a cat"])["input_ids"]).sum().item()
    for name in ("AltCLIP", "BAAI/AltCLIP"):
        result = run_offline(cache, name)
        assert result.returncode == 0, result.stderr
        assert float(result.stdout.strip()) == pytest.approx(expected, abs=1e-5)
    missing = run_offline(cache, "AltCLIP-m9")
    assert missing.returncode != 0
    assert "BAAI/AltCLIP-m9 (revision main) is not in the Hugging Face cache" in missing.stderr
    assert "HF_HUB_OFFLINE=1 is set: pass a local checkpoint folder" in missing.stderr
    wrong_revision = run_offline(cache, "AltCLIP", "v9.9")
    assert wrong_revision.returncode != 0 and "revision v9.9" in wrong_revision.stderr
