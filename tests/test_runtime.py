"""Runtimes behind the one Embedder: OpenVINO against transformers.AltCLIPModel, its cache, ``auto``, bad options,
and bf16 fidelity at BAAI/AltCLIP's widths."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import openvino  # noqa: F401 - the extra; CI installs every extra, so a missing one fails here
import pytest
import torch
import torch.nn.functional as F
from conftest import TEXTS, write_images
from PIL import Image
from transformers import AltCLIPModel, AltCLIPProcessor

from altclip_adapters import AltCLIP
from altclip_adapters.model.config import AltCLIPConfig, TextConfig, VisionConfig
from altclip_adapters.inference.embedder import Embedder, fuse_quick_gelu
from altclip_adapters.inference.runtimes import FIDELITY, OpenVINOTowers, cache_key, cpu_has_bf16, probe_inputs, resolve_runtime


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """The tests of this module share one cache folder (the tiny model is converted once)."""
    folder = tmp_path_factory.mktemp("ov_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ALTCLIP_CACHE", str(folder))
        yield folder / "openvino"


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("runtime_images"), 5, seed=7)


@pytest.fixture(scope="module")
def reference(tiny_dir, image_files):
    """transformers.AltCLIPModel's normalised text and image embeddings of TEXTS and image_files."""
    model, processor = AltCLIPModel.from_pretrained(tiny_dir).eval(), AltCLIPProcessor.from_pretrained(tiny_dir)
    with torch.no_grad():
        text = model.get_text_features(**processor(text=TEXTS, padding=True, return_tensors="pt")).pooler_output
        pixels = processor(images=[Image.open(p) for p in image_files], return_tensors="pt")
        image = model.get_image_features(**pixels).pooler_output
    return F.normalize(text, dim=-1), F.normalize(image, dim=-1)


def test_openvino_f32_equals_transformers(tiny_dir, reference, image_files):
    embedder = Embedder(AltCLIP.from_pretrained(tiny_dir), runtime="openvino", dtype=torch.float32, batch_size=2)
    assert (embedder.runtime, embedder.precision) == ("openvino", "f32")
    text, image = reference
    torch.testing.assert_close(embedder.texts(TEXTS), text, atol=1e-5, rtol=0)  # batches padded to their own longest
    torch.testing.assert_close(embedder.images(image_files), image, atol=1e-5, rtol=0)
    assert embedder.texts([]).shape == (0, text.shape[1])


def test_default_runs_bf16_where_its_measured_fidelity_holds(tiny_dir, reference, image_files, cache):
    model = fuse_quick_gelu(AltCLIP.from_pretrained(tiny_dir))
    default = Embedder(AltCLIP.from_pretrained(tiny_dir), runtime="openvino")
    if not cpu_has_bf16():  # CI's CPUs differ (Intel/AMD): without BF16 the default is f32 and measures nothing
        assert (default.precision, default.fidelity) == ("f32", {})
        torch.testing.assert_close(default.texts(TEXTS), reference[0], atol=1e-5, rtol=0)
        return
    # the fidelity it measured is the cosine of OpenVINO bf16 to the fp32 model on the probe inputs
    text_inputs, image_inputs = ({k: torch.from_numpy(v) for k, v in inputs.items()} for inputs in probe_inputs(model))
    bf16 = OpenVINOTowers(model, "bf16")
    with torch.inference_mode():
        expected_text = F.cosine_similarity(bf16.encode_text(**text_inputs), model.encode_text(**text_inputs)).min()
        expected_image = F.cosine_similarity(bf16.encode_image(**image_inputs), model.encode_image(**image_inputs)).min()
    assert default.fidelity == pytest.approx({"text": float(expected_text), "image": float(expected_image)}, abs=2e-6)
    assert min(default.fidelity.values()) >= FIDELITY and default.precision == "bf16"  # the tiny model holds it
    text, image = reference
    assert F.cosine_similarity(default.texts(TEXTS), text).min() > 0.9995
    assert F.cosine_similarity(default.images(image_files), image).min() > 0.9995
    # a checkpoint whose text tower loses fidelity in bf16 keeps it at f32: the measurement lives in the manifest
    manifest = cache / cache_key(model) / "altclip_openvino.json"
    record = json.loads(manifest.read_text())
    record["fidelity"]["bf16"]["text"] = 0.9987
    manifest.write_text(json.dumps(record))
    mixed = Embedder(AltCLIP.from_pretrained(tiny_dir), runtime="openvino")
    assert (mixed.precision, mixed.fidelity["text"]) == ("bf16+f32", 0.9987)  # images bf16, texts f32
    torch.testing.assert_close(mixed.texts(TEXTS), text, atol=1e-5, rtol=0)
    assert Embedder(AltCLIP.from_pretrained(tiny_dir), runtime="openvino", dtype=torch.bfloat16).precision == "bf16"


def test_openvino_int8_weights_stay_close(tiny_dir, reference, image_files, cache):
    embedder = Embedder(AltCLIP.from_pretrained(tiny_dir), runtime="openvino", int8=True)
    assert (embedder.runtime, embedder.precision) == ("openvino", "int8")
    assert (cache / f"{cache_key(embedder.model)}-int8" / "altclip_openvino.json").is_file()  # beside the float one
    text, image = reference
    assert F.cosine_similarity(embedder.texts(TEXTS), text).min() > 0.995
    assert F.cosine_similarity(embedder.images(image_files), image).min() > 0.995


def test_conversion_is_cached_and_a_stale_cache_rebuilt(tiny_dir, cache, reference):
    first = Embedder(AltCLIP.from_pretrained(tiny_dir), runtime="openvino", dtype=torch.float32)
    folder = cache / cache_key(first.model)
    files = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert set(files) == {"text.xml", "text.bin", "image.xml", "image.bin", "altclip_openvino.json"}
    Embedder(AltCLIP.from_pretrained(tiny_dir), runtime="openvino", dtype=torch.float32)  # read, not rewritten
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == files
    # a damaged cache is converted again (a new file: the one in use stays memory-mapped by the models above)
    (folder / "damaged").write_bytes(b"damaged")
    os.replace(folder / "damaged", folder / "text.bin")
    manifest = json.loads((folder / "altclip_openvino.json").read_text())
    (folder / "altclip_openvino.json").write_text(json.dumps({**manifest, "key": "an older conversion"}))
    again = Embedder(AltCLIP.from_pretrained(tiny_dir), runtime="openvino", dtype=torch.float32)
    torch.testing.assert_close(again.texts(TEXTS), reference[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(again.texts(TEXTS), first.texts(TEXTS), atol=0, rtol=0)
    other = fuse_quick_gelu(AltCLIP.from_pretrained(tiny_dir))  # other weights: another key, another folder
    assert cache_key(other) == folder.name
    with torch.no_grad():
        other.text_projection.weight[0, 0] += 1e-3
    assert cache_key(other) != folder.name
    assert not [p for p in cache.rglob("*") if p.name.startswith(".")]  # no temporary files left


def test_auto_picks_openvino_bf16_on_a_bf16_cpu_and_torch_otherwise(tiny_dir, monkeypatch):
    monkeypatch.delenv("ALTCLIP_RUNTIME")
    auto = Embedder(AltCLIP.from_pretrained(tiny_dir))
    assert auto.runtime == ("openvino" if cpu_has_bf16() else "torch")
    for torch_options in ({"dtype": torch.float32}, {"compile": True}, {"dtype": torch.bfloat16}):
        assert Embedder(AltCLIP.from_pretrained(tiny_dir), **torch_options).runtime == "torch"
    assert Embedder(AltCLIP.from_pretrained(tiny_dir), int8=True).runtime == auto.runtime  # int8 weights on OpenVINO
    assert resolve_runtime(None, torch.device("cuda")) == "torch"  # GPUs stay torch
    monkeypatch.setenv("ALTCLIP_RUNTIME", "torch")
    assert Embedder(AltCLIP.from_pretrained(tiny_dir)).runtime == "torch"


CTRL_C_AFTER_TWO_EMBEDDERS = """
import gc, os, signal, sys, time
import torch
from altclip_adapters import AltCLIP
from altclip_adapters.inference.embedder import Embedder
first = Embedder(AltCLIP.from_pretrained(sys.argv[1]), runtime="openvino", dtype=torch.float32)
second = Embedder(AltCLIP.from_pretrained(sys.argv[1]), runtime="openvino", int8=True)
second.texts(["a cat"])
del first; gc.collect(); del second; gc.collect()  # dropped in the order they were made
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
except KeyboardInterrupt:
    print("KeyboardInterrupt")
"""


def test_ctrl_c_after_embedders_are_dropped_is_a_keyboard_interrupt(tiny_dir):
    # one Core per process: OpenVINO's CPU plugin restores per-Core signal stacks out of order, leaving a freed one
    # installed; the next Python signal handler (Ctrl-C here) then crashed the process with SIGSEGV
    result = subprocess.run([sys.executable, "-c", CTRL_C_AFTER_TWO_EMBEDDERS, str(tiny_dir)], capture_output=True, text=True,
                            timeout=300, env=os.environ, check=False)
    # and stdout holds only what the script printed: NNCF's int8 statistics and progress bar stay off it
    assert (result.returncode, result.stdout.strip()) == (0, "KeyboardInterrupt"), result.stderr[-2000:]


def test_bad_runtime_options_get_one_clear_error(tiny_dir):
    model = AltCLIP.from_pretrained(tiny_dir)
    with pytest.raises(ValueError, match="runtime must be one of auto, torch, openvino; got 'tensorrt'"):
        Embedder(model, runtime="tensorrt")
    with pytest.raises(ValueError, match="runtime 'openvino' runs on the CPU; got device cuda"):
        Embedder(model, runtime="openvino", device="cuda")
    with pytest.raises(ValueError, match="runtime 'openvino' takes no compile"):
        Embedder(model, runtime="openvino", compile=True)
    with pytest.raises(ValueError, match="its dtype is fp32 or bf16"):
        Embedder(model, runtime="openvino", dtype=torch.float16)
    with pytest.raises(ValueError, match="int8 on OpenVINO keeps its own precisions"):
        Embedder(model, runtime="openvino", int8=True, dtype=torch.float32)
    with pytest.raises(ValueError, match="precision must be bf16, f32 or int8"):
        OpenVINOTowers(model, "int4")


@pytest.mark.parametrize("perturbation", [0.0, 0.1])
def test_default_fidelity_at_baai_widths(perturbation, tmp_path):
    """The default OpenVINO precisions at BAAI/AltCLIP's widths (1024 hidden, 16 heads, 4096 MLP, ViT-L/14 at 224,
    768-d projections) with 4 of its 24 layers per tower (bounded time on a shared 2-core machine), random weights:
    whatever the default runs keeps cosine >= 0.9995 to fp32 for texts of 40 and 6 tokens and for images. With the
    core's initialisation bf16 holds on both towers; every weight moved by N(0, 0.1) it holds on neither, and the
    default runs f32. All 24 layers take 6 GB and minutes to convert; benchmarks/bench.py measures them."""
    torch.manual_seed(0)
    config = AltCLIPConfig(text=TextConfig(vocab_size=1000, layers=4), vision=VisionConfig(layers=4))
    model = fuse_quick_gelu(AltCLIP(config).eval())
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * perturbation)
    towers = OpenVINOTowers(model, cache=tmp_path)
    assert towers.precision == ("bf16" if perturbation == 0 and cpu_has_bf16() else "f32"), towers.fidelity
    ids = torch.randint(3, 1000, (4, 40), generator=generator)
    ids[:, 0], mask = 0, torch.ones_like(ids)
    ids[2:, 6:], mask[2:, 6:] = config.text.pad_token_id, 0
    pixels = torch.randn(2, 3, 224, 224, generator=generator)
    with torch.inference_mode():
        text, image = model.encode_text(ids, mask), model.encode_image(pixels)
    assert F.cosine_similarity(towers.encode_text(ids, mask), text).min() >= 0.9995
    assert F.cosine_similarity(towers.encode_image(pixels), image).min() >= 0.9995
