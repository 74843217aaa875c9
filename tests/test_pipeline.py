"""The fast embedding pipeline equals transformers' AltCLIPModel + CLIPImageProcessor on the tiny checkpoint."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import write_images
from transformers import AltCLIPModel, AltCLIPProcessor, CLIPImageProcessor

from altclip_adapters import AltCLIP
from altclip_adapters.collection.inputs import find_images
from altclip_adapters.inference.embedder import Embedder, fuse_quick_gelu

ATOL = 1e-5
TEXTS = ["a photo of a cat", "一只狗的照片", "猫の写真", "ein Foto von einem Hund", "x", "une photo d'un chat rouge sur une table"]


@pytest.fixture(scope="module")
def reference(tiny_dir):
    return AltCLIPModel.from_pretrained(tiny_dir).eval()


@pytest.fixture(scope="module")
def embedder(tiny_dir):
    return Embedder(AltCLIP.from_pretrained(tiny_dir), batch_size=2)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("images"), 5, seed=3, name=lambda i: f"{i}.{'png' if i % 2 else 'jpg'}")


def reference_texts(reference, tiny_dir, texts):
    inputs = AltCLIPProcessor.from_pretrained(tiny_dir)(text=texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return F.normalize(reference.get_text_features(**inputs).pooler_output, dim=-1)


def reference_images(reference, tiny_dir, images):
    pixels = CLIPImageProcessor.from_pretrained(tiny_dir)(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return F.normalize(reference.get_image_features(pixel_values=pixels).pooler_output, dim=-1)


def test_texts_match_transformers_in_input_order(embedder, reference, tiny_dir):
    texts = TEXTS * 2
    expected = reference_texts(reference, tiny_dir, texts)
    torch.testing.assert_close(embedder.texts(texts), expected, atol=ATOL, rtol=0)


def test_text_batches_are_sorted_by_length_and_padded_to_their_longest(embedder):
    batches = list(embedder.iter_texts(TEXTS))
    lengths = [len(embedder.processor.tokenizer(TEXTS[i])["input_ids"]) for positions, _ in batches for i in positions]
    assert lengths == sorted(lengths, reverse=True)
    assert sorted(i for positions, _ in batches for i in positions) == list(range(len(TEXTS)))


def test_images_match_transformers_from_files_and_pil(embedder, reference, tiny_dir, image_files):
    from PIL import Image

    expected = reference_images(reference, tiny_dir, [Image.open(p).convert("RGB") for p in image_files])
    torch.testing.assert_close(embedder.images(image_files), expected, atol=ATOL, rtol=0)
    pil = [Image.open(p) for p in image_files]
    torch.testing.assert_close(embedder.images(pil), expected, atol=ATOL, rtol=0)


def test_quick_gelu_is_fused_into_silu_with_the_same_embeddings(tiny_dir, m18_dir, embedder, images):
    model = AltCLIP.from_pretrained(tiny_dir)
    pixels = model.processor(images=images)["pixel_values"]
    with torch.no_grad():
        expected = model.encode_image(pixels)
        got = fuse_quick_gelu(model).encode_image(pixels)
    assert all(isinstance(block.mlp.act, torch.nn.SiLU) for block in embedder.model.vision.vit.blocks)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    with torch.no_grad():  # a second fusion changes nothing
        torch.testing.assert_close(fuse_quick_gelu(model).encode_image(pixels), got, atol=0, rtol=0)
    gelu = AltCLIP.from_pretrained(m18_dir)  # m18's vision tower uses GELU: nothing to fuse
    before = {k: v.clone() for k, v in gelu.state_dict().items()}
    fuse_quick_gelu(gelu)
    assert all(torch.equal(v, before[k]) for k, v in gelu.state_dict().items())


def test_worker_processes_give_the_same_embeddings(tiny_dir, embedder, image_files):
    workers = Embedder(AltCLIP.from_pretrained(tiny_dir), batch_size=2, num_workers=2)
    torch.testing.assert_close(workers.images(image_files), embedder.images(image_files), atol=0, rtol=0)


def test_unreadable_images_are_reported_and_skipped(embedder, image_files, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    items = [image_files[0], broken, tmp_path / "missing.png", image_files[1]]
    batches = list(embedder.iter_images(items))
    assert [i for b in batches for i in b.indices] == [0, 3]
    errors = dict(e for b in batches for e in b.errors)
    assert set(errors) == {1, 2}
    assert "broken.jpg" in errors[1] and "missing.png" in errors[2]
    with pytest.raises(ValueError, match="broken.jpg"):
        embedder.images(items)


def test_int8_keeps_embeddings_close(tiny_dir, embedder, image_files):
    int8 = Embedder(AltCLIP.from_pretrained(tiny_dir), int8=True)
    assert type(int8.model.visual_projection).__module__.startswith("torch.ao.nn.quantized")
    for fast, exact in ((int8.texts(TEXTS), embedder.texts(TEXTS)), (int8.images(image_files), embedder.images(image_files))):
        assert F.cosine_similarity(fast, exact).min() > 0.99


def test_compiled_image_batches_keep_one_shape(tiny_dir, embedder, image_files):
    compiled = Embedder(AltCLIP.from_pretrained(tiny_dir), compile=True, batch_size=4)
    torch.testing.assert_close(compiled.images(image_files), embedder.images(image_files), atol=ATOL, rtol=0)


def test_bfloat16_embeddings_are_close_to_fp32(tiny_dir, embedder, image_files):
    half = Embedder(AltCLIP.from_pretrained(tiny_dir), dtype=torch.bfloat16)
    assert half.model.dtype == torch.bfloat16
    assert F.cosine_similarity(half.images(image_files), embedder.images(image_files)).min() > 0.99
    assert half.texts(TEXTS).dtype == torch.float32


def test_bad_inputs_get_clear_errors(tiny_dir, embedder, tmp_path):
    with pytest.raises(TypeError, match="got a single str"):
        embedder.texts("a single string")
    with pytest.raises(TypeError, match="text 1 is a int"):
        embedder.texts(["ok", 3])
    with pytest.raises(TypeError, match="images must be a list; got NoneType"):
        embedder.images(None)
    with pytest.raises(ValueError, match="batch_size"):
        Embedder(AltCLIP.from_pretrained(tiny_dir), batch_size=0)
    with pytest.raises(ValueError, match="int8"):
        Embedder(AltCLIP.from_pretrained(tiny_dir), device="cuda", int8=True)
    bare = AltCLIP(AltCLIP.from_pretrained(tiny_dir).config)
    with pytest.raises(ValueError, match="no processor"):
        Embedder(bare)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_images([tmp_path / "nowhere"])
    with pytest.raises(ValueError, match="no image files"):
        find_images([tmp_path])


def test_find_images_searches_folders_recursively(tmp_path, image_files):
    (tmp_path / "sub").mkdir()
    for path in image_files[:2]:
        (tmp_path / "sub" / path.name).write_bytes(path.read_bytes())
    (tmp_path / "notes.txt").write_text("not an image")
    assert [p.name for p in find_images([tmp_path])] == sorted(p.name for p in image_files[:2])


def test_decoding_jpegs_with_torchvision_matches_the_cpu_path(tiny_dir, embedder, image_files, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really")
    (tmp_path / "empty.jpg").write_bytes(b"")
    items = [image_files[0], broken, image_files[1], tmp_path / "empty.jpg", tmp_path / "missing.jpg", image_files[2]]
    device = Embedder(AltCLIP.from_pretrained(tiny_dir), decode_on_device=True, batch_size=4)
    batches = list(device.iter_images(items))
    assert [i for b in batches for i in b.indices] == [0, 2, 5]
    errors = dict(e for b in batches for e in b.errors)
    assert sorted(errors) == [1, 3, 4]
    assert "broken.jpg" in errors[1] and "empty.jpg" in errors[3] and "missing.jpg" in errors[4]
    got = torch.cat([b.embeddings for b in batches])
    expected = embedder.images([image_files[0], image_files[1], image_files[2]])
    assert F.cosine_similarity(got, expected).min() > 0.9999
