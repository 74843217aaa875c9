"""The one image loader (``altclip_adapters.model.images``): orientation, transparency, bit depth, size limits and
unreadable files, the same for every input form, checked against the EXIF spec, transformers' own
decoding where it is right, and a property-based sweep over PIL modes, sizes, orientations and forms."""

from __future__ import annotations

import base64
import functools
import http.server
import io
import json
import re
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers import AltCLIPProcessor as ReferenceProcessor
from transformers import CLIPImageProcessor

from altclip_adapters import AltCLIP
from altclip_adapters.model.images import DEFAULT_MAX_IMAGE_PIXELS, UnreadableImageError, jpeg_orientation, load_image, orient
from altclip_adapters.model.processor import ImageTransform

LEVEL = 1 / 255 / min(ImageTransform().std) + 1e-6  # one 8-bit level after normalisation (0.015)

# How a viewer shows stored pixels [H, W, C] for each EXIF Orientation value, from the EXIF 2.3 spec's
# (0th row, 0th column) positions: 1 top-left, 2 top-right, 3 bottom-right, 4 bottom-left, 5 left-top,
# 6 right-top, 7 right-bottom, 8 left-bottom. Written out here, independent of PIL's table.
DISPLAY = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),  # 90 degrees clockwise
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def encode(image: Image.Image, format: str, orientation: int = 1, **params) -> bytes:
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    if format == "TIFF":
        image.save(buffer, format, tiffinfo={274: orientation} if orientation != 1 else {}, **params)
    else:
        image.save(buffer, format, exif=exif, **params)
    return buffer.getvalue()


def png16(samples: np.ndarray) -> bytes:
    """A 16-bit PNG (grey, grey+alpha, RGB or RGBA by the channel count), which PIL cannot write."""
    samples = np.asarray(samples, dtype=">u2")
    height, width = samples.shape[:2]
    channels = 1 if samples.ndim == 2 else samples.shape[2]
    raw = b"".join(b"\0" + samples[y].tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, {1: 0, 2: 4, 3: 2, 4: 6}[channels], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def forms(path: Path) -> dict[str, object]:
    """Every encoded form of one file."""
    data = path.read_bytes()
    return {
        "str": str(path),
        "Path": path,
        "bytes": data,
        "bytearray": bytearray(data),
        "memoryview": memoryview(data),
        "BytesIO": io.BytesIO(data),
        "data URI": "data:image/png;base64," + base64.b64encode(data).decode(),
    }


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


def blocky(height: int, width: int, seed: int = 0) -> Image.Image:
    """An asymmetric RGB picture of flat 8 x 8 blocks (survives JPEG well)."""
    rng = np.random.RandomState(seed)
    cells = rng.randint(0, 256, (-(-height // 8), -(-width // 8), 3), dtype=np.uint8)
    return Image.fromarray(np.kron(cells, np.ones((8, 8, 1), dtype=np.uint8))[:height, :width].copy())


@pytest.fixture(scope="module")
def reference(tiny_dir):
    """transformers' processor on the tiny checkpoint, and its image processor giving uint8 (no rescale)."""
    return ReferenceProcessor.from_pretrained(tiny_dir), CLIPImageProcessor(do_rescale=False, do_normalize=False)


@pytest.fixture(scope="module")
def transform():
    return ImageTransform()


# --- 1. EXIF orientation ------------------------------------------------------------------------


@pytest.mark.parametrize("format", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_encoded_form_is_turned_upright_by_its_exif_orientation(tmp_path, format, orientation, reference):
    path = tmp_path / f"o{orientation}.{format.lower()}"
    path.write_bytes(encode(blocky(48, 32), format, orientation, **({"quality": 95} if format == "JPEG" else {})))
    stored = np.asarray(Image.open(path).convert("RGB"))  # the pixels as stored, tag not applied
    upright = DISPLAY[orientation](stored)
    for name, form in forms(path).items():
        assert np.array_equal(pixels(load_image(form)), upright), name
    # a PIL image the caller opened is used as given, as transformers' processors use it
    assert np.array_equal(pixels(load_image(Image.open(path))), stored)
    if format != "WEBP":  # transformers decodes paths with torchvision, applying the tag
        processor, _ = reference
        expected = processor(images=str(path), return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(ours(processor, path), expected, atol=LEVEL, rtol=0)


def ours(processor, image) -> torch.Tensor:
    """Our pixel values [1, 3, H, W] with the reference processor's settings."""
    return ImageTransform.from_preprocessor_config(processor.image_processor.to_dict())(image)[None]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_header_orientation_and_tensor_orient_match_the_loader(tmp_path, orientation):
    """The device path's rules: the orientation read from the header, applied to torchvision's decode."""
    from torchvision.io import ImageReadMode, decode_jpeg

    data = encode(blocky(40, 24), "JPEG", orientation, quality=95)
    assert jpeg_orientation(data) == orientation
    decoded = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    assert np.array_equal(orient(decoded, orientation).permute(1, 2, 0).numpy(), pixels(load_image(data)))


def test_jpeg_orientation_sends_other_files_to_the_loader():
    image = blocky(16, 16)
    assert jpeg_orientation(encode(image.convert("CMYK"), "JPEG")) is None
    assert jpeg_orientation(encode(image, "PNG")) is None
    assert jpeg_orientation(b"\xff\xd8 not a jpeg") is None
    assert jpeg_orientation(encode(image, "JPEG"), max_image_pixels=255) is None
    assert jpeg_orientation(encode(image.convert("L"), "JPEG")) == 1


# --- 2. Transparency ----------------------------------------------------------------------------


def transparent_images() -> dict[str, Image.Image]:
    """An opaque square on a transparent background whose hidden colours are not white, in each mode."""
    rng = np.random.RandomState(5)
    rgba = rng.randint(0, 256, (30, 40, 4), dtype=np.uint8)
    rgba[..., 3] = 0
    rgba[8:20, 10:30, 3] = 255
    rgba[2:5, 2:5, 3] = 128  # half transparent too
    image = Image.fromarray(rgba)
    palette = image.convert("RGB").quantize(16)
    keyed = palette.copy()
    keyed.info["transparency"] = 3
    return {"RGBA": image, "LA": image.convert("LA"), "P+tRNS": keyed, "P": palette}


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P+tRNS", "P"])
def test_transparency_is_dropped_the_same_way_for_every_form(tmp_path, mode, reference):
    image = transparent_images()[mode]
    path = tmp_path / "t.png"
    image.save(path, **({"transparency": image.info["transparency"]} if "transparency" in image.info else {}))
    expected = np.asarray(Image.open(path).convert("RGB"))  # the stored colours
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    composited = np.asarray(Image.alpha_composite(white, Image.open(path).convert("RGBA")).convert("RGB"))
    assert np.array_equal(expected, composited) == (mode == "P")  # hidden colours are not white
    for name, form in {**forms(path), "PIL": Image.open(path), "PIL in memory": image}.items():
        assert np.array_equal(pixels(load_image(form)), expected), name
    if mode == "RGBA":
        assert np.array_equal(pixels(load_image(np.asarray(image))), expected)
        assert np.array_equal(pixels(load_image(torch.from_numpy(np.array(image)).permute(2, 0, 1))), expected)
    # a path gives transformers' file decoding's pixels (torchvision drops alpha), as an export_native folder does
    processor, _ = reference
    ref = processor(images=str(path), return_tensors="pt")["pixel_values"]
    assert torch.equal(ours(processor, path), ref)


def test_transformers_differs_where_the_readme_says(tmp_path, reference):
    """README's list of transformers' own inconsistencies, held: PIL RGBA composited onto white, PIL I;16
    clipped at 255, 16-bit files passed on unscaled, the PIL form not turned upright."""
    processor, raw = reference
    rgba = transparent_images()["RGBA"]
    assert not torch.equal(raw(images=rgba, return_tensors="pt")["pixel_values"][0], raw(images=rgba.convert("RGB"), return_tensors="pt")["pixel_values"][0])
    grey16 = Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16))
    assert grey16.mode == "I;16"
    assert (raw(images=grey16, return_tensors="pt")["pixel_values"] == 255).float().mean() > 0.9  # clipped
    path = tmp_path / "grey16.png"
    grey16.save(path)
    assert processor(images=str(path), return_tensors="pt")["pixel_values"].max() > 100  # 16-bit values / 255
    rotated = tmp_path / "r.jpg"
    rotated.write_bytes(encode(blocky(48, 32), "JPEG", 6))
    assert not torch.equal(
        processor(images=Image.open(rotated), return_tensors="pt")["pixel_values"],
        processor(images=str(rotated), return_tensors="pt")["pixel_values"],
    )


# --- 3. Bit depth -------------------------------------------------------------------------------


def test_16_bit_and_wider_images_keep_the_picture(tmp_path, transform):
    """The high byte of 16-bit samples, the same in every mode and form; the 8-bit picture's embedding input."""
    picture = np.asarray(blocky(40, 56).convert("L"))
    wide = picture.astype(np.uint16) * 257  # the exact 8 -> 16 bit expansion
    (tmp_path / "grey16.png").write_bytes(png16(wide))
    (tmp_path / "rgb16.png").write_bytes(png16(np.stack([wide] * 3, -1)))
    (tmp_path / "la16.png").write_bytes(png16(np.stack([wide, wide * 0 + 65535], -1)))
    Image.fromarray(wide.astype(np.int32)).save(tmp_path / "i32.tiff")
    expected = np.stack([picture] * 3, -1)
    inputs = {
        "I;16 PNG": tmp_path / "grey16.png",
        "I;16 PIL": Image.open(tmp_path / "grey16.png"),
        "I;16B": Image.frombytes("I;16B", (56, 40), wide.astype(">u2").tobytes()),
        "I;16L": Image.frombytes("I;16L", (56, 40), wide.astype("<u2").tobytes()),
        "I": Image.fromarray(wide.astype(np.int32)),
        "I TIFF": tmp_path / "i32.tiff",
        "RGB 16-bit PNG": tmp_path / "rgb16.png",
        "LA 16-bit PNG": tmp_path / "la16.png",
        "F (8-bit levels)": Image.fromarray(picture.astype(np.float32) + 0.25),
        **{f"I;16 {name}": form for name, form in forms(tmp_path / "grey16.png").items()},
    }
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    for name, image in inputs.items():
        assert np.array_equal(pixels(load_image(image)), expected), name
    eight_bit = transform(Image.fromarray(picture))
    torch.testing.assert_close(transform(tmp_path / "grey16.png"), eight_bit, atol=LEVEL, rtol=0)
    # outside the 16-bit range: clipped
    extremes = Image.fromarray(np.array([[-5, 0, 65535, 70000, 255, 256]], dtype=np.int32))
    assert pixels(load_image(extremes))[0, :, 0].tolist() == [0, 0, 255, 255, 0, 1]
    floats = Image.fromarray(np.array([[-3.0, 0.9, 254.5, 300.0, np.nan]], dtype=np.float32))
    assert pixels(load_image(floats))[0, :, 0].tolist() == [0, 0, 254, 255, 0]


# --- 4. Size limits and unreadable files --------------------------------------------------------


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """A 14,000 x 13,000 PNG (182 M pixels, 2 kB on disk): over PIL's and our default limits."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (14_000, 13_000)).save(path)
    return path


def test_a_decompression_bomb_is_unreadable_by_default_and_readable_past_a_raised_limit(bomb):
    limit = Image.MAX_IMAGE_PIXELS
    message = f"bomb.png has 182,000,000 pixels, over the limit of {DEFAULT_MAX_IMAGE_PIXELS:,}; raise max_image_pixels"
    with pytest.raises(UnreadableImageError, match=message):
        load_image(bomb)
    with pytest.raises(UnreadableImageError, match="data URI .* has 182,000,000 pixels"):
        load_image("data:image/png;base64," + base64.b64encode(bomb.read_bytes()).decode())
    image = load_image(bomb, max_image_pixels=200_000_000)  # past PIL's own refusal (178,956,970)
    assert image.size == (14_000, 13_000) and image.mode == "RGB"
    del image
    assert Image.MAX_IMAGE_PIXELS == limit  # PIL's limit for the rest of the process is untouched
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bomb)


def test_max_image_pixels_applies_to_encoded_forms(tmp_path):
    path = tmp_path / "small.png"
    blocky(100, 100).save(path)
    for form in forms(path).values():
        with pytest.raises(UnreadableImageError, match="has 10,000 pixels, over the limit of 9,999"):
            load_image(form, max_image_pixels=9_999)
    assert load_image(path, max_image_pixels=10_000).size == (100, 100)
    assert load_image(path, max_image_pixels=None).size == (100, 100)
    assert load_image(Image.open(path), max_image_pixels=1).size == (100, 100)  # decoded by the caller: as given
    for bad in (0, -1, 2.5, "100", True):
        with pytest.raises(ValueError, match="max_image_pixels must be a positive integer or None"):
            load_image(path, max_image_pixels=bad)


def unreadable_files(tmp_path: Path) -> dict[str, Path]:
    png, jpeg = io.BytesIO(), io.BytesIO()
    blocky(64, 64).save(png, "PNG")
    blocky(64, 64).save(jpeg, "JPEG")
    files = {
        "truncated.png": png.getvalue()[: len(png.getvalue()) // 2],
        "truncated.jpg": jpeg.getvalue()[: len(jpeg.getvalue()) // 2],
        "empty.jpg": b"",
        "notes.jpg": b"a text file named like a picture\n",
        "header-only.png": png.getvalue()[:40],
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return {name: tmp_path / name for name in files}


def test_unreadable_files_raise_one_error_type_naming_the_source(tmp_path):
    for name, path in unreadable_files(tmp_path).items():
        with pytest.raises(UnreadableImageError, match=f"cannot read .*{name} as an image"):
            load_image(path)
        with pytest.raises(UnreadableImageError, match=r"cannot read bytes \(.*\) as an image"):
            load_image(path.read_bytes())
        with pytest.raises(ValueError, match="BytesIO"):  # UnreadableImageError is a ValueError
            load_image(io.BytesIO(path.read_bytes()))
    with open(tmp_path / "notes.jpg", "rb") as file, pytest.raises(UnreadableImageError, match="file .*notes.jpg"):
        load_image(file)
    with pytest.raises(FileNotFoundError, match="image file not found: .*missing.png"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(UnreadableImageError, match=f"cannot read {re.escape(str(tmp_path))}"):
        load_image(tmp_path)  # a folder
    with pytest.raises(UnreadableImageError, match=r"data URI \(.*\) is not valid base64"):
        load_image("data:image/png;base64,not base64!")
    with pytest.raises(UnreadableImageError, match=r"data URI \(.*\) has no ','"):
        load_image("data:image/png;base64")
    with pytest.raises(TypeError, match="got float"):
        load_image(3.5)
    with pytest.raises(TypeError, match="binary mode"):
        load_image(io.StringIO("text"))
    with pytest.raises(TypeError, match="uint8"):
        load_image(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        load_image(np.zeros((8, 8, 7), dtype=np.uint8))


@pytest.mark.parametrize(
    "make",
    [
        lambda: blocky(20, 30).convert("CMYK"),
        lambda: blocky(20, 30).convert("YCbCr"),
        lambda: blocky(20, 30).convert("1"),
        lambda: blocky(1, 1),
    ],
    ids=["CMYK", "YCbCr", "1-bit", "1x1"],
)
def test_other_modes_and_tiny_images(tmp_path, make, transform):
    image = make()
    path = tmp_path / "x.tiff"
    image.save(path)
    expected = np.asarray(image.convert("RGB"))
    for form in (path, image, path.read_bytes()):
        assert np.array_equal(pixels(load_image(form)), expected)
    assert transform(path).shape == (3, 224, 224) and torch.isfinite(transform(path)).all()
    if image.mode == "CMYK":
        (tmp_path / "cmyk.jpg").write_bytes(encode(image, "JPEG", 6))
        assert load_image(tmp_path / "cmyk.jpg").size == (20, 30)  # upright: 6 swaps the sides


@pytest.fixture
def http_folder(tmp_path):
    """A local HTTP server (127.0.0.1) serving ``tmp_path``; yields its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_urls_are_fetched_turned_upright_and_refused_when_not_allowed(tmp_path, http_folder):
    (tmp_path / "r.jpg").write_bytes(encode(blocky(48, 32), "JPEG", 6))
    url = f"{http_folder}/r.jpg"
    assert np.array_equal(pixels(load_image(url)), pixels(load_image(tmp_path / "r.jpg")))
    assert load_image(url).size == (48, 32)
    with pytest.raises(ValueError, match="image URLs are not fetched here"):
        load_image(url, allow_urls=False)
    with pytest.raises(UnreadableImageError, match="cannot fetch .*/missing.jpg.*404"):
        load_image(f"{http_folder}/missing.jpg")


# --- 5. Resize amplification --------------------------------------------------------------------


@pytest.mark.parametrize("size", [(900, 3), (3, 900), (3000, 5), (5, 3000), (2, 1000), (7000, 113), (113, 7000)])
def test_extreme_aspect_ratios_match_the_reference_within_one_level(size, transform, reference):
    """Only the crop's region is resized (see ImageTransform.resize_crop_region); the reference still
    computes the whole strip at these sizes."""
    _, raw = reference
    height, width = size
    rng = np.random.RandomState(height * width)
    image = Image.fromarray(rng.randint(0, 256, (height, width, 3), dtype=np.uint8))  # noise: the worst case
    expected = raw(images=image, return_tensors="pt")["pixel_values"][0]
    got = transform.uint8(image)
    assert got.dtype == torch.uint8 and got.shape == expected.shape == (3, 224, 224)
    assert (got.int() - expected.int()).abs().max() <= 1
    assert torch.equal(transform.resize_crop(torch.from_numpy(np.array(image)).permute(2, 0, 1)), got)


def test_ordinary_images_keep_the_exact_reference_arithmetic(transform, reference):
    _, raw = reference
    rng = np.random.RandomState(0)
    for height, width in [(640, 480), (300, 4000), (224, 7000), (37, 45)]:  # up to 31:1
        image = Image.fromarray(rng.randint(0, 256, (height, width, 3), dtype=np.uint8))
        assert torch.equal(transform.uint8(image), raw(images=image, return_tensors="pt")["pixel_values"][0])


MEMORY_SCRIPT = """
import json, resource, sys
import torch
from PIL import Image
from altclip_adapters.model.processor import ImageTransform

transform = ImageTransform()
transform.uint8(sys.argv[2])  # warm up: imports, allocator pools
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
shape = tuple(transform.uint8(sys.argv[1]).shape)
pixels = torch.from_numpy(__import__("numpy").asarray(Image.open(sys.argv[1]).convert("RGB"))).permute(2, 0, 1)
shape_tensor = tuple(transform.resize_crop(pixels).shape)
print(json.dumps({"kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, "shapes": [shape, shape_tensor]}))
"""


def test_a_2_by_40000_strip_takes_bounded_memory(tmp_path):
    """Measured in a fresh process (peak resident memory); the full resize would take about 8 GB."""
    rng = np.random.RandomState(1)
    Image.fromarray(rng.randint(0, 256, (40_000, 2, 3), dtype=np.uint8)).save(tmp_path / "strip.png")
    blocky(300, 400).save(tmp_path / "ordinary.png")
    run = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / "strip.png"), str(tmp_path / "ordinary.png")],
        check=False, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["shapes"] == [[3, 224, 224], [3, 224, 224]]
    assert result["kb"] < 100_000, result


def test_draft_decodes_jpegs_at_a_reduced_scale_keeping_the_shortest_edge(tmp_path, transform):
    picture = blocky(600, 800).resize((1600, 1200), Image.Resampling.BICUBIC)  # smooth enough for JPEG
    data = encode(picture, "JPEG", 6, quality=95)
    assert load_image(data).size == (1200, 1600)
    assert load_image(data, draft=448).size == (600, 800)  # 1/2: 1/4 would leave a 300-pixel shortest edge
    assert load_image(data, draft=300).size == (300, 400)
    assert load_image(data, draft=5000).size == (1200, 1600)
    assert load_image(encode(picture, "PNG"), draft=300).size == (1600, 1200)  # JPEG only
    exact, reduced = transform(data), transform(load_image(data, draft=448))
    assert F.cosine_similarity(exact.flatten(), reduced.flatten(), dim=0) > 0.999


# --- Property-based: every mode, size, orientation and form ------------------------------------

PNG_MODES = ["1", "L", "LA", "P", "P+tRNS", "RGB", "RGBA", "I;16"]
TIFF_MODES = ["CMYK", "YCbCr", "I", "F"]


def make_image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.RandomState(seed)
    rgba = rng.randint(0, 256, (height, width, 4), dtype=np.uint8)
    if mode == "I;16":
        return Image.fromarray(rng.randint(0, 65536, (height, width)).astype(np.uint16))
    if mode == "I":
        return Image.fromarray(rng.randint(-1000, 70000, (height, width)).astype(np.int32))
    if mode == "F":
        return Image.fromarray(rng.uniform(-10, 270, (height, width)).astype(np.float32))
    image = Image.fromarray(rgba)
    if mode.startswith("P"):
        image = image.convert("RGB").quantize(8)
        if mode == "P+tRNS":
            image.info["transparency"] = 1
        return image
    return image.convert(mode)


sizes = st.one_of(
    st.tuples(st.integers(1, 40), st.integers(1, 40)),
    st.tuples(st.integers(2, 4), st.integers(200, 800)),  # extreme aspect ratios (region path)
    st.tuples(st.integers(200, 800), st.integers(2, 4)),
)


@settings(max_examples=40, deadline=None)
@given(
    mode=st.sampled_from(PNG_MODES + TIFF_MODES),
    size=sizes,
    orientation=st.integers(1, 8),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_every_mode_size_orientation_and_form_agree(tmp_path_factory, reference, mode, size, orientation, seed):
    _, raw = reference
    transform = ImageTransform()
    image = make_image(mode, *size, seed)
    png = mode in PNG_MODES
    orientation = orientation if png else 1  # TIFF orientation: PIL applies it while loading (covered above)
    params = {"transparency": image.info["transparency"]} if mode == "P+tRNS" else {}
    path = tmp_path_factory.mktemp("prop") / ("x.png" if png else "x.tiff")
    path.write_bytes(encode(image, "PNG" if png else "TIFF", orientation, **params))

    by_path = transform.uint8(path)
    values = transform.normalize(by_path)
    assert values.shape == (3, 224, 224) and torch.isfinite(values).all()
    for name, form in forms(path).items():
        assert torch.equal(transform.uint8(form), by_path), name
    # the PIL form is used as given: turned upright by the spec's table, it is the path's picture
    stored = pixels(load_image(Image.open(path)))
    assert np.array_equal(DISPLAY[orientation](stored), pixels(load_image(path)))
    # ... and 8-bit decoded pictures the reference reads correctly give the reference's pixels
    if mode in ("RGB", "L"):
        expected = raw(images=Image.open(path), return_tensors="pt")["pixel_values"][0]
        assert (transform.uint8(Image.open(path)).int() - expected.int()).abs().max() <= 1
    if png and mode != "I;16":  # transformers' file decoding: upright, alpha dropped, 8-bit
        expected = raw(images=str(path), return_tensors="pt")["pixel_values"][0]
        assert (by_path.int() - expected.int()).abs().max() <= 1


# --- End to end: a rotated phone photo gives the upright picture's embedding --------------------


@pytest.fixture(scope="module")
def rotated_jpeg(tmp_path_factory):
    """(a JPEG stored sideways with Orientation 6, the upright picture as a PIL image)."""
    path = tmp_path_factory.mktemp("phone") / "phone.jpg"
    path.write_bytes(encode(blocky(64, 48, seed=7), "JPEG", 6, quality=95))
    upright = Image.fromarray(np.ascontiguousarray(DISPLAY[6](np.asarray(Image.open(path).convert("RGB")))))
    return path, upright


def test_sentence_transformers_embeds_a_rotated_jpeg_upright(tiny_dir, rotated_jpeg, tmp_path):
    """Every form of a rotated JPEG gives the upright picture's embedding; a path (rotated JPEG, RGBA PNG)
    gives the same embedding through an ``export_native`` folder (transformers' file decoding)."""
    from sentence_transformers import SentenceTransformer

    from altclip_adapters.integrations.sentence_transformers import export_native, load

    path, upright = rotated_jpeg
    model = load(tiny_dir, device="cpu")
    got = model.encode([str(path), path, upright, "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()])
    for row in got[[0, 1, 3]]:
        np.testing.assert_allclose(row, got[2], atol=1e-5)
    sideways = model.encode([Image.open(path)])[0]
    assert np.abs(sideways - got[2]).max() > 1e-3  # the test would catch an ignored tag
    rgba = tmp_path / "rgba.png"
    transparent_images()["RGBA"].save(rgba)
    native = SentenceTransformer(str(export_native(model, tmp_path / "native")), device="cpu")
    np.testing.assert_allclose(native.encode([str(path), str(rgba)]), model.encode([str(path), str(rgba)]), atol=1e-5)


def test_embedder_and_integrations_embed_a_rotated_jpeg_upright(tiny_dir, rotated_jpeg):
    from altclip_adapters.integrations._embedder import image_vectors, load_embedder
    from altclip_adapters.inference.embedder import Embedder

    path, upright = rotated_jpeg
    embedder = Embedder(AltCLIP.from_pretrained(tiny_dir), batch_size=4)
    got = embedder.images([path, upright, str(path)])
    torch.testing.assert_close(got[0], got[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(got[2], got[1], atol=1e-5, rtol=0)
    on_device = Embedder(AltCLIP.from_pretrained(tiny_dir), batch_size=4, decode_on_device=True).images([path, upright])
    assert F.cosine_similarity(on_device[:1], got[1:2]).item() > 0.9999
    integration = load_embedder(tiny_dir, batch_size=2, device="cpu")  # what LangChain's and LlamaIndex's backends build
    vectors = torch.tensor(image_vectors(integration, [str(path), io.BytesIO(path.read_bytes()), upright]))
    torch.testing.assert_close(vectors[0], vectors[2], atol=1e-5, rtol=0)
    torch.testing.assert_close(vectors[1], vectors[2], atol=1e-5, rtol=0)


def test_embedder_reports_unreadable_images_of_any_kind_and_goes_on(tiny_dir, tmp_path, bomb):
    from altclip_adapters.inference.embedder import Embedder

    good = tmp_path / "good.png"
    blocky(30, 30).save(good)
    bad = unreadable_files(tmp_path)
    items = [good, bomb, *bad.values(), good]
    for device_decoding in (False, True):
        embedder = Embedder(AltCLIP.from_pretrained(tiny_dir), batch_size=3, decode_on_device=device_decoding)
        batches = list(embedder.iter_images(items))
        assert [i for b in batches for i in b.indices] == [0, len(items) - 1]
        errors = dict(e for b in batches for e in b.errors)
        assert "bomb.png has 182,000,000 pixels" in errors[1]
        for position, name in enumerate(bad, start=2):
            assert name in errors[position]
        with pytest.raises(ValueError, match="bomb.png"):
            embedder.images(items)
    big = Embedder(AltCLIP.from_pretrained(tiny_dir), max_image_pixels=50)
    with pytest.raises(ValueError, match="good.png has 900 pixels, over the limit of 50"):
        big.images([good])
    with pytest.raises(ValueError, match="max_image_pixels"):
        Embedder(AltCLIP.from_pretrained(tiny_dir), max_image_pixels=0)
