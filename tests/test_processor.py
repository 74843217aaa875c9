"""Preprocessing equals transformers' AltCLIPProcessor, for every accepted input kind."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_images
from PIL import Image
from transformers import AltCLIPProcessor as ReferenceProcessor
from transformers import CLIPImageProcessor

from altclip_adapters import AltCLIPProcessor, ImageTransform


def test_pixels_equal_clip_image_processor_at_224(images):
    """The BAAI preprocessing (shortest edge 224, bicubic, crop 224) on odd and even, small and large images."""
    reference = CLIPImageProcessor()  # its defaults are BAAI/AltCLIP's preprocessor_config.json
    ours = ImageTransform.from_preprocessor_config(reference.to_dict())
    rng = np.random.RandomState(1)
    sizes = [(480, 640), (641, 479), (224, 224), (100, 333), (225, 1001), (37, 45)]
    batch = [Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    expected = reference(batch, return_tensors="pt")["pixel_values"]
    got = torch.stack([ours(image) for image in batch])
    assert got.shape == expected.shape == (len(sizes), 3, 224, 224)
    assert torch.equal(got, expected), (got - expected).abs().max()


def test_processor_matches_reference_processor(tiny_dir, texts, images):
    ours = AltCLIPProcessor.from_pretrained(tiny_dir)
    ref = ReferenceProcessor.from_pretrained(tiny_dir)
    expected = ref(text=texts, images=images, padding=True, return_tensors="pt")
    got = ours(text=texts, images=images)
    for key in ("input_ids", "attention_mask", "pixel_values"):
        assert torch.equal(got[key], expected[key]), key


@pytest.mark.parametrize(
    "convert",
    [
        lambda im, tmp: np.array(im),  # HWC uint8
        lambda im, tmp: torch.from_numpy(np.array(im)).permute(2, 0, 1),  # CHW uint8 tensor
        lambda im, tmp: str(im.save(tmp / "x.png") or tmp / "x.png"),  # file path
        lambda im, tmp: im.convert("RGBA"),
    ],
    ids=["numpy-hwc", "tensor-chw", "path", "rgba"],
)
def test_other_image_inputs_equal_pil(tiny_dir, tmp_path, convert):
    ours = AltCLIPProcessor.from_pretrained(tiny_dir)
    image = make_images(1)[0]
    assert torch.equal(ours.images(convert(image, tmp_path)), ours.images(image))


def test_grayscale_and_transparent_images_match_reference(tiny_dir, tmp_path):
    """Greyscale as transformers; transparency dropped (the stored colours) for PIL images as for files,
    as transformers' file decoding does (its PIL path composites onto white instead: see test_images.py)."""
    ours = AltCLIPProcessor.from_pretrained(tiny_dir)
    ref = ReferenceProcessor.from_pretrained(tiny_dir)
    rng = np.random.RandomState(2)
    gray = Image.fromarray(rng.randint(0, 256, (40, 50), dtype=np.uint8))
    rgba = Image.fromarray(rng.randint(0, 256, (40, 50, 4), dtype=np.uint8))
    rgba.save(tmp_path / "rgba.png")
    assert torch.equal(ours.images(gray), ref(images=gray, return_tensors="pt")["pixel_values"])
    assert torch.equal(ours.images(rgba), ref(images=rgba.convert("RGB"), return_tensors="pt")["pixel_values"])
    assert torch.equal(ours.images(rgba), ref(images=str(tmp_path / "rgba.png"), return_tensors="pt")["pixel_values"])


def test_truncation_at_context_length(tiny_dir):
    ours = AltCLIPProcessor.from_pretrained(tiny_dir)
    long_text = "a photo of a cat " * 100
    assert ours.tokenize(long_text)["input_ids"].shape == (1, 77)
    assert ours.tokenize(long_text, context_length=512)["input_ids"].shape[1] > 77
    ids = ours.tokenize(["a cat", "x"], context_length=20, pad_to_context_length=True)["input_ids"]
    assert ids.shape == (2, 20) and ids[0, 0] == 0 and ids[1].tolist().count(1) > 10 and ids[1, -1] == 1


@pytest.mark.parametrize("bad", [0, 1, 513, 77.5])
def test_bad_context_length(tiny_dir, bad):
    with pytest.raises(ValueError, match="context_length"):
        AltCLIPProcessor.from_pretrained(tiny_dir).tokenize("a cat", context_length=bad)


@pytest.mark.parametrize("bad, error, match", [
    (None, TypeError, "texts must be a list; got NoneType"),
    (3, TypeError, "texts must be a list; got int"),
    (["ok", 3], TypeError, "text 1 is a int"),
    ([["nested"]], TypeError, "text 0 is a list"),
])
def test_bad_texts(tiny_dir, bad, error, match):
    with pytest.raises(error, match=match):
        AltCLIPProcessor.from_pretrained(tiny_dir).tokenize(bad)


def test_bad_images(tiny_dir, tmp_path):
    processor = AltCLIPProcessor.from_pretrained(tiny_dir)
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        processor.images(str(tmp_path / "missing.png"))
    with pytest.raises(ValueError, match="notes.txt"):
        processor.images(not_an_image)
    with pytest.raises(TypeError, match="images must be a list; got NoneType"):
        processor.images(None)
    with pytest.raises(TypeError, match="expected an image"):
        processor.images([3.5])
    with pytest.raises(TypeError, match="uint8"):
        processor.images(np.zeros((8, 8, 3), dtype=np.float64))
    with pytest.raises(ValueError, match="shape"):
        processor.images(np.zeros((8, 8, 7), dtype=np.uint8))
