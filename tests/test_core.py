"""The core against transformers.AltCLIPModel: numbers, checkpoint layouts, round trips."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_images
from transformers import AltCLIPModel, AltCLIPProcessor

from altclip_adapters import AltCLIP

ATOL = 1e-5


def reference(folder):
    return AltCLIPModel.from_pretrained(folder).eval(), AltCLIPProcessor.from_pretrained(folder)


def inputs(processor, texts, images):
    return processor(text=texts, images=images, padding=True, return_tensors="pt")


def assert_parity(folder, texts, images, **forward_kwargs):
    ref, ref_processor = reference(folder)
    ours = AltCLIP.from_pretrained(folder)
    batch = inputs(ref_processor, texts, images)
    with torch.no_grad():
        expected = ref(**batch, return_loss=True, output_hidden_states=True, **forward_kwargs)
        got = ours(
            batch["input_ids"], batch["pixel_values"], batch["attention_mask"],
            return_loss=True, output_hidden_states=True, **forward_kwargs,
        )
        plain = ours(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], return_loss=True, **forward_kwargs)
        text_features = ours.encode_text(batch["input_ids"], batch["attention_mask"])
        image_features = ours.encode_image(batch["pixel_values"], **forward_kwargs)
        ref_text = ref.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).pooler_output
        ref_image = ref.get_image_features(pixel_values=batch["pixel_values"], **forward_kwargs).pooler_output
    torch.testing.assert_close(text_features, ref_text, atol=ATOL, rtol=0)
    torch.testing.assert_close(image_features, ref_image, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.text_embeds, expected.text_embeds, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.image_embeds, expected.image_embeds, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.logits_per_image, expected.logits_per_image, atol=ATOL * 100, rtol=0)  # logit scale ~14
    torch.testing.assert_close(got.logits_per_text, expected.logits_per_text, atol=ATOL * 100, rtol=0)
    torch.testing.assert_close(got.loss, expected.loss, atol=ATOL, rtol=0)
    torch.testing.assert_close(plain.loss, expected.loss, atol=ATOL, rtol=0)  # the class-token path, no hidden states
    torch.testing.assert_close(plain.logits_per_image, expected.logits_per_image, atol=ATOL * 100, rtol=0)
    assert plain.vision_hidden_states is None and plain.text_hidden_states is None
    for ours_states, ref_states in (
        (got.text_hidden_states, expected.text_model_output.hidden_states),
        (got.vision_hidden_states, expected.vision_model_output.hidden_states),
    ):
        assert len(ours_states) == len(ref_states)
        for a, b in zip(ours_states, ref_states):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    return ours


def test_parity_tiny(tiny_dir, texts, images):
    assert_parity(tiny_dir, texts[:4], images)


def test_parity_legacy_bin(tiny_bin_dir, texts, images):
    assert_parity(tiny_bin_dir, texts[:4], images)


def test_parity_sharded(tiny_sharded_dir, texts, images):
    assert_parity(tiny_sharded_dir, texts[:4], images)


def test_parity_m18_shapes_and_transformation_pre(m18_dir, texts, images):
    ours = assert_parity(m18_dir, texts[:4], images)
    assert ours.config.text.transformation_pre and ours.text.transformation_pre is not None
    ids = ours.processor.tokenize(texts)["input_ids"]
    with torch.no_grad():
        pre = ours.text.pre_features(ids)
        states = ours.text.encoder(input_ids=ids, attention_mask=ids.ne(1), output_hidden_states=True).hidden_states
    torch.testing.assert_close(pre, ours.text.transformation_pre(states[-2]))
    assert pre.shape == (len(texts), ids.shape[1], ours.config.text.project_dim)


def test_parity_interpolated_image_size(tiny_dir, texts):
    ref, ref_processor = reference(tiny_dir)
    ours = AltCLIP.from_pretrained(tiny_dir)
    pixels = torch.randn(2, 3, 48, 40)  # 6 x 5 patches instead of 4 x 4
    with torch.no_grad():
        expected = ref.get_image_features(pixel_values=pixels, interpolate_pos_encoding=True).pooler_output
        got = ours.encode_image(pixels, interpolate_pos_encoding=True)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        ours.encode_image(pixels)


def test_bin_and_safetensors_give_the_same_numbers(tiny_dir, tiny_bin_dir, texts, images):
    a, b = AltCLIP.from_pretrained(tiny_dir), AltCLIP.from_pretrained(tiny_bin_dir)
    batch = a.processor(text=texts, images=images)
    with torch.no_grad():
        torch.testing.assert_close(a.encode_text(batch["input_ids"]), b.encode_text(batch["input_ids"]), atol=0, rtol=0)
        torch.testing.assert_close(a.encode_image(batch["pixel_values"]), b.encode_image(batch["pixel_values"]), atol=0, rtol=0)


@pytest.mark.parametrize("fixture", ["tiny_dir", "m18_dir"])
def test_save_pretrained_round_trip_into_transformers(fixture, request, tmp_path, texts, images):
    source = request.getfixturevalue(fixture)
    ours = AltCLIP.from_pretrained(source)
    ours.save_pretrained(tmp_path / "out")
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"} <= {p.name for p in (tmp_path / "out").iterdir()}
    ref, ref_processor = reference(tmp_path / "out")
    original_ref, original_processor = reference(source)
    batch = inputs(original_processor, texts, images)
    assert torch.equal(inputs(ref_processor, texts, images)["input_ids"], batch["input_ids"])
    assert torch.equal(inputs(ref_processor, texts, images)["pixel_values"], batch["pixel_values"])
    with torch.no_grad():
        torch.testing.assert_close(ref(**batch).logits_per_image, original_ref(**batch).logits_per_image, atol=0, rtol=0)
        torch.testing.assert_close(
            ours(batch["input_ids"], batch["pixel_values"], batch["attention_mask"]).logits_per_image,
            ref(**batch).logits_per_image, atol=ATOL * 100, rtol=0,
        )
    again = AltCLIP.from_pretrained(tmp_path / "out")  # and back into the core, transformation_pre included
    for (key, a), b in zip(ours.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), key


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_fp32(tiny_dir, texts, images, dtype):
    full = AltCLIP.from_pretrained(tiny_dir)
    half = AltCLIP.from_pretrained(tiny_dir, dtype=dtype)
    assert half.dtype == dtype and all(p.dtype == dtype for p in half.parameters())
    batch = full.processor(text=texts, images=images)
    with torch.no_grad():
        for a, b in (
            (full.encode_text(batch["input_ids"], normalize=True), half.encode_text(batch["input_ids"], normalize=True)),
            (full.encode_image(batch["pixel_values"], normalize=True), half.encode_image(batch["pixel_values"], normalize=True)),
        ):
            assert b.dtype == dtype
            assert torch.nn.functional.cosine_similarity(a, b.float()).min() > 0.99


def test_gradient_checkpointing_gives_the_same_gradients(tiny_dir, texts, images):
    grads = []
    for enable in (False, True):
        model = AltCLIP.from_pretrained(tiny_dir).train()
        model.set_grad_checkpointing(enable)
        batch = model.processor(text=texts[:4], images=images)
        model(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], return_loss=True).loss.backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], atol=1e-6, rtol=1e-5, msg=key)


def test_encode_image_last_block_on_the_class_token_gives_the_same_gradients(tiny_dir, images):
    """encode_image runs the last vision block on the class token only; values and gradients equal the full pass."""
    model = AltCLIP.from_pretrained(tiny_dir).train()
    pixels = model.processor(images=images)["pixel_values"]
    results = []
    for encode in (model.encode_image, lambda x: model.visual_projection(model.vision(x)[0])):
        model.zero_grad()
        features = encode(pixels)
        features.pow(2).sum().backward()
        results.append((features.detach(), {k: p.grad.clone() for k, p in model.vision.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0], atol=ATOL, rtol=0)
    assert len(results[0][1]) > 10
    for key, grad in results[0][1].items():
        expected = results[1][1][key]  # float32 rounding, relative to each gradient's scale
        torch.testing.assert_close(grad, expected, atol=1e-5 * expected.abs().max().item(), rtol=0, msg=key)


def test_encode_normalize_and_shapes(tiny_dir, texts, images):
    model = AltCLIP.from_pretrained(tiny_dir)
    batch = model.processor(text=texts, images=images)
    with torch.no_grad():
        text = model.encode_text(batch["input_ids"], normalize=True)
        image = model.encode_image(batch["pixel_values"], normalize=True)
    assert text.shape == (len(texts), model.config.projection_dim) and image.shape == (len(images), model.config.projection_dim)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(len(texts)))
    torch.testing.assert_close(image.norm(dim=-1), torch.ones(len(images)))


def test_loss_needs_as_many_texts_as_images(tiny_dir, texts):
    model = AltCLIP.from_pretrained(tiny_dir)
    batch = model.processor(text=texts, images=make_images(2))
    with pytest.raises(ValueError, match="one text per image"):
        model(batch["input_ids"], batch["pixel_values"], return_loss=True)


def test_config_round_trips_through_hf_json(tiny_dir):
    model = AltCLIP.from_pretrained(tiny_dir)
    written = model.config.to_hf()
    original = json.loads((tiny_dir / "config.json").read_text())
    for tower in ("text_config", "vision_config"):
        for key, value in written[tower].items():
            if key in original[tower]:
                assert original[tower][key] == value, (tower, key)
