"""AltCLIP as an open_clip model, in this process: registration, loading, contract, numbers.

Numbers are checked against ``transformers.AltCLIPModel`` (fp32, atol 1e-5). The tiny checkpoints
are registered as the open_clip models ``AltCLIP-tiny`` / ``AltCLIP-m18-tiny`` through open_clip's
own ``add_model_config``, with configs from :func:`model_config`.
"""

from __future__ import annotations

import json
import shutil

import huggingface_hub
import numpy as np
import open_clip
import pytest
import torch
from conftest import make_images
from open_clip import factory
from torch.testing import assert_close
from transformers import AltCLIPModel, CLIPImageProcessor

import altclip_adapters
from altclip_adapters import AltCLIP
from altclip_adapters.integrations.open_clip import AltCLIPOpenCLIP, model_config, save_for_open_clip, save_hf

TOL = {"atol": 1e-5, "rtol": 0}
CLASSNAMES = ["猫", "dog", "voiture"]
TEMPLATES = [lambda c: f"a photo of a {c}.", lambda c: f"一张{c}的照片。", lambda c: f"ein Foto von {c}"]


@pytest.fixture(scope="module")
def names(tiny_dir, m18_dir, tmp_path_factory):
    """``AltCLIP-tiny`` and ``AltCLIP-m18-tiny`` as open_clip model names."""
    folder = tmp_path_factory.mktemp("open_clip_configs")
    for name, checkpoint in (("AltCLIP-tiny", tiny_dir), ("AltCLIP-m18-tiny", m18_dir)):
        (folder / f"{name}.json").write_text(json.dumps(model_config(checkpoint)))
    open_clip.add_model_config(folder)
    return "AltCLIP-tiny", "AltCLIP-m18-tiny"


@pytest.fixture(scope="module")
def tiny(names, tiny_dir):
    return open_clip.create_model(names[0], pretrained=str(tiny_dir / "model.safetensors"))


@pytest.fixture(scope="module")
def reference(tiny_dir):
    return AltCLIPModel.from_pretrained(tiny_dir).eval()


@pytest.fixture(scope="module")
def inputs(tiny_dir, names):
    """Pixel values from the checkpoint's processor and token ids from open_clip's tokenizer."""
    processor = AltCLIP.from_pretrained(tiny_dir).processor
    texts = ["a photo of a cat", "一只狗的照片", "猫の写真", "ein Foto von einem Hund", "x"]
    return processor.images(make_images(4)), open_clip.get_tokenizer(names[0])(texts)


def reference_embeddings(reference, pixel_values, ids, **kwargs):
    with torch.no_grad():
        out = reference(input_ids=ids, attention_mask=(ids != 1).long(), pixel_values=pixel_values, **kwargs)
    return out.image_embeds, out.text_embeds, out


def embeddings(model, pixel_values, ids):
    with torch.no_grad():
        return model.encode_image(pixel_values, normalize=True), model.encode_text(ids, normalize=True)


# registration ---------------------------------------------------------------------------------


def test_models_and_tags_are_listed():
    for name in ("AltCLIP", "AltCLIP-m9", "AltCLIP-m18"):
        assert name in open_clip.list_models()
        assert (name, "baai") in open_clip.list_pretrained()
        assert open_clip.list_pretrained_tags_by_model(name) == ["baai"]
    cfg = open_clip.get_pretrained_cfg("AltCLIP", "baai")
    assert cfg["hf_hub"] == "BAAI/AltCLIP/pytorch_model.bin" and cfg["interpolation"] == "bicubic"
    assert open_clip.get_pretrained_cfg("AltCLIP-m18", "BAAI")["hf_hub"] == "BAAI/AltCLIP-m18/pytorch_model.bin"
    config = open_clip.get_model_config("AltCLIP")
    assert config["embed_dim"] == 768 and config["text_cfg"]["hf_tokenizer_name"] == "BAAI/AltCLIP"
    assert config["text_cfg"]["context_length"] == 77 and config["altclip"]["vision"]["patch_size"] == 14
    assert open_clip.get_model_config("AltCLIP-m18")["altclip"]["text"]["transformation_pre"] is True


def test_register_is_idempotent_and_keeps_other_models_untouched(tmp_path):
    dispatch = factory.CustomTextCLIP
    count = len(open_clip.list_models())
    altclip_adapters.register()
    altclip_adapters.register()
    assert factory.CustomTextCLIP is dispatch and len(open_clip.list_models()) == count
    assert dispatch.altclip_defers_to is open_clip.CustomTextCLIP  # the package attribute stays the real class
    small = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
    }
    (tmp_path / "small-clip.json").write_text(json.dumps(small))
    (tmp_path / "small-custom-text.json").write_text(json.dumps({**small, "custom_text": True}))
    open_clip.add_model_config(tmp_path)
    assert type(open_clip.create_model("small-clip")) is open_clip.CLIP
    assert type(open_clip.create_model("small-custom-text")) is open_clip.CustomTextCLIP


def test_registration_fails_loudly_when_open_clip_changes(monkeypatch):
    monkeypatch.delattr(factory, "_MODEL_CONFIGS")
    with pytest.raises(ImportError, match=r"open_clip.factory._MODEL_CONFIGS is missing"):
        altclip_adapters.register()
    monkeypatch.undo()
    monkeypatch.setattr(factory, "create_model", lambda *args, **kwargs: None)
    with pytest.raises(ImportError, match="no longer looks up CustomTextCLIP"):
        altclip_adapters.register()


# loading --------------------------------------------------------------------------------------


def test_parity_open_clip_core_transformers(tiny, tiny_dir, reference, inputs):
    pixel_values, ids = inputs
    image, text, out = reference_embeddings(reference, pixel_values, ids)
    core = AltCLIP.from_pretrained(tiny_dir)
    for model in (tiny, core):
        got_image, got_text = embeddings(model, pixel_values, ids)
        assert_close(got_image, image, **TOL)
        assert_close(got_text, text, **TOL)
    with torch.no_grad():
        image_features, text_features, scale = tiny(pixel_values, ids)
        tiny.output_dict = True
        as_dict = tiny(image=pixel_values, text=ids)
        tiny.output_dict = False
    assert_close(scale * image_features @ text_features.T, out.logits_per_image, **TOL)
    assert set(as_dict) == {"image_features", "text_features", "logit_scale"}
    assert_close(as_dict["text_features"], text_features, atol=0, rtol=0)
    assert tiny(image=pixel_values)[1] is None and tiny(text=ids)[0] is None


def test_the_model_keeps_the_open_clip_contract(tiny, names):
    assert isinstance(tiny, AltCLIPOpenCLIP) and isinstance(tiny, AltCLIP)
    assert tiny.logit_bias is None and tiny.logit_scale.ndim == 0
    assert tiny.context_length == 77 and tiny.vocab_size == tiny.config.text.vocab_size
    assert tiny.visual.image_size == 32 and tiny.visual.preprocess_cfg["size"] == 32
    assert not hasattr(tiny, "module")
    assert set(tiny.state_dict()) == set(AltCLIP(tiny.config).state_dict())  # the core's layout
    siglip = open_clip.create_model(names[0], init_logit_bias=-10.0, init_logit_scale=np.log(10), output_dict=True)
    out = siglip(text=open_clip.get_tokenizer(names[0])(["x"]))
    assert out["logit_bias"].item() == -10.0 and out["logit_scale"].item() == pytest.approx(10.0)


@pytest.mark.parametrize("layout", ["model.safetensors", "pytorch_model.bin"])
def test_pretrained_baai_files(layout, names, tiny_dir, tiny_bin_dir, reference, inputs):
    folder = tiny_dir if layout.endswith("safetensors") else tiny_bin_dir
    model = open_clip.create_model(names[0], pretrained=str(folder / layout))
    image, text, _ = reference_embeddings(reference, *inputs)
    got_image, got_text = embeddings(model, *inputs)
    assert_close(got_image, image, **TOL)
    assert_close(got_text, text, **TOL)


def test_pretrained_tag_downloads_the_baai_file(names, tiny_bin_dir, reference, inputs, tmp_path, monkeypatch):
    """The ``baai`` tag's hub path, fetched by open_clip's own download code (from an offline hub cache
    holding the tiny weights under BAAI/AltCLIP, the way the real repo lays out pytorch_model.bin)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--BAAI--AltCLIP"
    shutil.copytree(tiny_bin_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1 in tox.ini
    monkeypatch.setitem(
        open_clip.pretrained._PRETRAINED, names[0], {"baai": open_clip.get_pretrained_cfg("AltCLIP", "baai")}
    )
    model = open_clip.create_model(names[0], pretrained="baai", cache_dir=str(tmp_path / "hub"))
    image, text, _ = reference_embeddings(reference, *inputs)
    assert_close(embeddings(model, *inputs), (image, text), **TOL)


def test_m18_keeps_transformation_pre(names, m18_dir):
    model = open_clip.create_model(names[1], pretrained=str(m18_dir / "model.safetensors"))
    reference = AltCLIPModel.from_pretrained(m18_dir).eval()
    core = AltCLIP.from_pretrained(m18_dir)
    pixel_values = core.processor.images(make_images(2))
    ids = open_clip.get_tokenizer(names[1])(["a photo of a cat", "猫の写真"])
    image, text, _ = reference_embeddings(reference, pixel_values, ids)
    assert_close(embeddings(model, pixel_values, ids)[1], text, **TOL)
    assert_close(embeddings(model, pixel_values, ids)[0], image, **TOL)
    assert_close(model.text.transformation_pre.weight, core.text.transformation_pre.weight, atol=0, rtol=0)


def test_pretrained_open_clip_checkpoints(tiny, names, tmp_path, inputs):
    """A training checkpoint (DDP keys, as open_clip_train writes) and a bare state dict."""
    state = tiny.state_dict()
    torch.save(
        {"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "epoch_3.pt"
    )
    torch.save(state, tmp_path / "bare.pt")
    expected = embeddings(tiny, *inputs)
    for path in (tmp_path / "epoch_3.pt", tmp_path / "bare.pt"):
        got = embeddings(open_clip.create_model(names[0], pretrained=str(path)), *inputs)
        assert_close(got, expected, atol=0, rtol=0)


def test_local_dir_and_hf_hub_schemas(tiny_dir, tiny, tmp_path, inputs, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1 in tox.ini
    folder = save_for_open_clip(tiny_dir, tmp_path / "open_clip_folder")
    assert {"open_clip_config.json", "open_clip_model.safetensors", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()
    }
    commit = "0123456789abcdef0123456789abcdef01234567"
    cache = tmp_path / "hub"
    shutil.copytree(folder, cache / "models--altclip-test--tiny" / "snapshots" / commit)
    (cache / "models--altclip-test--tiny" / "refs").mkdir()
    (cache / "models--altclip-test--tiny" / "refs" / "main").write_text(commit)
    expected = embeddings(tiny, *inputs)
    texts = ["a photo of a cat", "一只狗的照片"]
    for name in (f"local-dir:{folder}", "hf-hub:altclip-test/tiny"):
        model, _, preprocess = open_clip.create_model_and_transforms(name, cache_dir=str(cache))
        assert isinstance(model, AltCLIPOpenCLIP) and preprocess(make_images(1)[0]).shape == (3, 32, 32)
        assert_close(embeddings(model, *inputs), expected, atol=0, rtol=0)
        tokenizer = open_clip.get_tokenizer(name, cache_dir=str(cache))
        assert torch.equal(tokenizer(texts), open_clip.get_tokenizer("AltCLIP-tiny")(texts))


def test_save_for_hf_round_trip_keeps_the_tokenizer(tiny, tmp_path):
    """open_clip's own save_for_hf, with the model config open_clip hands out."""
    from open_clip.push_to_hf_hub import save_for_hf

    tokenizer = open_clip.get_tokenizer("AltCLIP-tiny")
    save_for_hf(tiny, tokenizer, open_clip.get_model_config("AltCLIP-tiny"), tmp_path / "saved")
    reloaded = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'saved'}")
    texts = ["a photo of a cat", "فوتو", "一只狗的照片" * 30]
    assert reloaded.context_length == 77 and torch.equal(reloaded(texts), tokenizer(texts))
    model = open_clip.create_model(f"local-dir:{tmp_path / 'saved'}")
    assert_close(model.state_dict(), tiny.state_dict(), atol=0, rtol=0)


def test_export_to_the_baai_layout(tiny, tmp_path, inputs):
    folder = save_hf(tiny, open_clip.get_tokenizer("AltCLIP-tiny"), tmp_path / "hf")
    reference = AltCLIPModel.from_pretrained(folder).eval()
    image, text, _ = reference_embeddings(reference, *inputs)
    assert_close(embeddings(tiny, *inputs), (image, text), **TOL)
    from transformers import AltCLIPProcessor

    processor = AltCLIPProcessor.from_pretrained(folder)
    assert processor(text=["一只狗的照片"], return_tensors="pt")["input_ids"].tolist() == [
        [0, *processor.tokenizer("一只狗的照片", add_special_tokens=False)["input_ids"], 2]
    ]


# tokenizer and transforms ---------------------------------------------------------------------


def test_tokenizer_matches_the_checkpoint_processor(tiny_dir, names):
    tokenizer = open_clip.get_tokenizer(names[0])
    processor = AltCLIP.from_pretrained(tiny_dir).processor
    texts = ["a photo of a cat", "一只狗的照片", "猫の写真", "ein Foto von einem Hund", "una foto " * 60]
    ids = tokenizer(texts)
    assert ids.dtype == torch.long and ids.shape == (5, 77)
    assert torch.equal(ids, processor.tokenize(texts, pad_to_context_length=True)["input_ids"])
    assert tokenizer("x", context_length=8).shape == (1, 8)
    assert open_clip.get_tokenizer(names[0], context_length=16)(texts).shape == (5, 16)


def crop_offset_open_clip(length, crop):
    return round((length - crop) / 2.0)  # torchvision CenterCrop


def crop_offset_transformers(length, crop):
    return int((length - crop) / 2.0)  # CLIPImageProcessor


def test_transforms_match_clip_image_processor(names, tiny_dir):
    """open_clip's own eval transform against CLIPImageProcessor, measured on 12 images of odd sizes.

    Where both crop at the same offset the max |difference| is 0.0150: one 8-bit level over the std
    (open_clip resizes with PIL, transformers with torch; they round a few pixels differently).
    Where ``resized long side - crop`` is 3 mod 4, torchvision's CenterCrop rounds the offset up and
    CLIPImageProcessor floors it (2 of these 12 images; max |difference| 1.73 unaligned): the crops
    are then one pixel apart, and the same 0.0150 once aligned.
    """
    _, _, preprocess = open_clip.create_model_and_transforms(names[0], pretrained=str(tiny_dir / "model.safetensors"))
    processor = CLIPImageProcessor.from_pretrained(tiny_dir)
    worst, shifted = 0.0, 0
    for image in make_images(12, seed=3):
        ours = preprocess(image)
        theirs = processor(images=image, return_tensors="pt")["pixel_values"][0]
        width, height = image.size
        short = min(width, height)
        long_side = int(32 * max(width, height) / short)
        if crop_offset_open_clip(long_side, 32) != crop_offset_transformers(long_side, 32):
            shifted += 1
            ours, theirs = (ours[:, :-1], theirs[:, 1:]) if height > width else (ours[:, :, :-1], theirs[:, :, 1:])
        worst = max(worst, (ours - theirs).abs().max().item())
    assert worst <= 0.0151 and shifted == 2


def test_force_image_size_interpolates_like_transformers(names, tiny_dir, reference):
    model, _, preprocess = open_clip.create_model_and_transforms(
        names[0], pretrained=str(tiny_dir / "model.safetensors"), force_image_size=48
    )
    assert model.visual.image_size == 48 and model.visual.preprocess_cfg["size"] == 48
    pixel_values = torch.stack([preprocess(image) for image in make_images(2)])
    assert pixel_values.shape == (2, 3, 48, 48)
    ids = open_clip.get_tokenizer(names[0])(["x"])
    image, _, _ = reference_embeddings(reference, pixel_values, ids, interpolate_pos_encoding=True)
    assert_close(embeddings(model, pixel_values, ids)[0], image, **TOL)


# zero-shot and retrieval ----------------------------------------------------------------------


def test_zero_shot_classifier_and_retrieval(tiny, names, reference, inputs):
    tokenizer = open_clip.get_tokenizer(names[0])
    classifier = open_clip.build_zero_shot_classifier(
        tiny, tokenizer, CLASSNAMES, TEMPLATES, num_classes_per_batch=2, device="cpu", use_tqdm=False
    )
    assert classifier.shape == (tiny.config.projection_dim, len(CLASSNAMES))
    pixel_values, ids = inputs
    columns = []
    for name in CLASSNAMES:
        _, text, _ = reference_embeddings(reference, pixel_values, tokenizer([t(name) for t in TEMPLATES]))
        mean = text.mean(dim=0)
        columns.append(mean / mean.norm())
    assert_close(classifier, torch.stack(columns, dim=1), **TOL)
    image, text, out = reference_embeddings(reference, pixel_values, ids)
    logits = embeddings(tiny, pixel_values, ids)[0] @ classifier
    assert torch.equal(logits.argmax(dim=1), (image @ torch.stack(columns, dim=1)).argmax(dim=1))
    similarity = embeddings(tiny, pixel_values, ids)[0] @ embeddings(tiny, pixel_values, ids)[1].T
    assert torch.equal(similarity.argsort(dim=1), out.logits_per_image.argsort(dim=1))  # text retrieval ranking
    assert torch.equal(similarity.T.argsort(dim=1), out.logits_per_text.argsort(dim=1))  # image retrieval ranking


# precision, locking, checkpointing ------------------------------------------------------------


@pytest.mark.parametrize(
    "precision, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16), ("pure_bf16", torch.bfloat16)]
)
def test_precisions(precision, dtype, names, tiny_dir, tiny, inputs):
    model = open_clip.create_model(names[0], pretrained=str(tiny_dir / "model.safetensors"), precision=precision)
    pixel_values, ids = inputs
    image, text = embeddings(model, pixel_values.to(dtype), ids)
    assert image.dtype == dtype and text.dtype == dtype
    if precision != "pure_bf16":  # open_clip keeps norms and embeddings in fp32
        assert model.text.pre_ln.weight.dtype == torch.float32 and model.text_projection.weight.dtype == dtype
    expected = embeddings(tiny, pixel_values, ids)
    assert_close((image.float(), text.float()), expected, atol=0.03, rtol=0)


def test_lock_towers(names):
    model = open_clip.create_model(names[0])
    model.lock_image_tower()
    assert not any(p.requires_grad for p in [*model.vision.parameters(), *model.visual_projection.parameters()])
    assert all(p.requires_grad for p in model.text.parameters())
    model.lock_image_tower(unlocked_groups=2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and n.startswith(("vision", "visual"))}
    assert trainable == {"visual_projection.weight"} | {
        n for n, _ in model.named_parameters() if n.startswith(("vision.vit.blocks.1.", "vision.vit.norm."))
    }
    model = open_clip.create_model(names[0])
    model.lock_text_tower(unlocked_layers=1, freeze_layer_norm=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and n.startswith("text")}
    assert "text.encoder.encoder.layer.1.attention.self.query.weight" in trainable
    assert not any(n.startswith(("text.encoder.embeddings", "text.encoder.encoder.layer.0.")) for n in trainable)
    assert {"text.pre_ln.weight", "text.transformation.weight", "text_projection.weight"} <= trainable


def test_grad_checkpointing_gives_the_same_gradients(names, tiny_dir, inputs):
    pixel_values, ids = inputs
    grads = []
    for enable in (False, True):
        model = open_clip.create_model(names[0], pretrained=str(tiny_dir / "model.safetensors"), output_dict=True)
        model.train().set_grad_checkpointing(enable)
        out = model(pixel_values, ids[:4])
        loss = open_clip.ClipLoss()(out["image_features"], out["text_features"], out["logit_scale"])
        loss.backward()
        grads.append(
            [model.vision.vit.blocks[0].attn.qkv.weight.grad, model.text.encoder.embeddings.word_embeddings.weight.grad]
        )
    assert_close(grads[0], grads[1], atol=1e-6, rtol=0)


def test_random_init_is_finite(names, inputs):
    """Training from scratch (no pretrained=) starts from finite weights."""
    model = open_clip.create_model(names[0])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.isfinite(torch.cat(embeddings(model, *inputs), dim=0)).all()


# bad input ------------------------------------------------------------------------------------


def test_wrong_architecture_names_the_tensors(names, m18_dir):
    with pytest.raises(ValueError, match="transformation_pre"):
        open_clip.create_model(names[0], pretrained=str(m18_dir / "model.safetensors"))


def test_bad_inputs_are_named(names, tiny, tmp_path):
    with pytest.raises(RuntimeError, match="not a known tag or valid file path"):
        open_clip.create_model(names[0], pretrained=str(tmp_path / "missing.bin"))
    with pytest.raises(ValueError, match="patch dropout"):
        open_clip.create_model(names[0], force_patch_dropout=0.5)
    with pytest.raises(FileNotFoundError, match="neither an AltCLIP registry name"):
        model_config(tmp_path / "nowhere")
    with pytest.raises(TypeError, match="expected an open_clip AltCLIP model"):
        save_hf(torch.nn.Linear(1, 1), None, tmp_path)
    with pytest.raises(ValueError, match="Input image size"):
        tiny.encode_image(torch.zeros(1, 3, 48, 48))
