"""``altclip export``: the written graphs run in ONNX Runtime and OpenVINO and equal transformers.AltCLIPModel."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime  # noqa: E402,F401 - the extras; CI installs every extra, so a missing one fails here
import openvino  # noqa: E402,F401
import pytest
import torch
import torch.nn.functional as F
from conftest import TEXTS, make_images
from transformers import AltCLIPModel
from transformers import AltCLIPProcessor as HFProcessor

from altclip_adapters.model.processor import AltCLIPProcessor
from altclip_adapters.inference.runtimes import cpu_has_bf16, openvino_core


def altclip(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "altclip_adapters.cli", *map(str, args)]
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def reference(tiny_dir):
    """transformers' unnormalised features of TEXTS (padded to the longest) and of three images, with its inputs."""
    model, processor = AltCLIPModel.from_pretrained(tiny_dir).eval(), HFProcessor.from_pretrained(tiny_dir)
    tokens = processor(text=TEXTS, padding=True, return_tensors="pt")
    pixels = processor(images=make_images(3, seed=11), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        text = model.get_text_features(**tokens).pooler_output
        image = model.get_image_features(pixel_values=pixels).pooler_output
    return tokens, pixels, text, image


@pytest.fixture(scope="module", params=["onnx", "openvino"])
def exported(request, tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"export_{request.param}")
    result = altclip("export", tiny_dir, "--to", request.param, "--out", out, "--overwrite")
    assert result.returncode == 0, result.stderr
    return request.param, out, result


def run(fmt, out, graph, inputs, precision="f32"):
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out / f"{graph}.onnx"), providers=["CPUExecutionProvider"])
        return session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    compiled = openvino_core().compile_model(str(out / f"{graph}.xml"), "CPU", {"INFERENCE_PRECISION_HINT": precision})
    return compiled({k: v.numpy() for k, v in inputs.items()})[0]


def test_graphs_equal_transformers_with_dynamic_batch_and_sequence(exported, reference):
    fmt, out, _ = exported
    tokens, pixels, text, image = reference
    inputs = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
    np.testing.assert_allclose(run(fmt, out, "text", inputs), text.numpy(), atol=1e-4, rtol=0)
    shortest = int(inputs["attention_mask"].sum(1).argmin())  # alone, unpadded: another batch and sequence length
    length = int(inputs["attention_mask"][shortest].sum())
    assert length < inputs["input_ids"].shape[1]
    alone = {k: v[shortest : shortest + 1, :length] for k, v in inputs.items()}
    np.testing.assert_allclose(run(fmt, out, "text", alone)[0], text[shortest].numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(run(fmt, out, "image", {"pixel_values": pixels}), image.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(run(fmt, out, "image", {"pixel_values": pixels[:1]}), image[:1].numpy(), atol=1e-4, rtol=0)


def test_manifest_tokenizer_and_preprocessing_beside_the_graphs(exported, tiny_dir):
    fmt, out, result = exported
    manifest = json.loads((out / "altclip_export.json").read_text())
    suffix = ".onnx" if fmt == "onnx" else ".xml"
    assert manifest["graphs"] == {"text": f"text{suffix}", "image": f"image{suffix}"}
    assert set(manifest["inputs"]["text"]) == {"input_ids", "attention_mask"}
    assert manifest["outputs"]["image"]["image_embeds"]["shape"] == ["batch", 16]
    for tower in ("text", "image"):
        assert manifest["parity"][tower]["max_abs_diff"] < 1e-4 and manifest["parity"][tower]["min_cosine"] > 0.9999
        assert f"{tower}: max |difference|" in result.stderr
    assert json.loads(result.stdout)["format"] == fmt
    ours, theirs = AltCLIPProcessor.from_pretrained(out), AltCLIPProcessor.from_pretrained(tiny_dir)
    assert ours.tokenize(TEXTS)["input_ids"].tolist() == theirs.tokenize(TEXTS)["input_ids"].tolist()
    image = make_images(1, seed=4)[0]
    torch.testing.assert_close(ours.image_transform(image), theirs.image_transform(image), atol=0, rtol=0)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.parametrize("exported", ["openvino"], indirect=True)  # bf16 inference: ONNX Runtime's CPU provider runs f32
def test_openvino_bf16_of_the_export(exported, reference):
    fmt, out, _ = exported
    precision = "bf16" if cpu_has_bf16() else "f32"  # CI's CPUs differ (Intel/AMD): the best this one runs
    tokens, pixels, text, image = reference
    inputs = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
    cos_text = F.cosine_similarity(torch.from_numpy(run(fmt, out, "text", inputs, precision)), text).min()
    cos_image = F.cosine_similarity(torch.from_numpy(run(fmt, out, "image", {"pixel_values": pixels}, precision)), image).min()
    assert cos_text > 0.999 and cos_image > 0.999


@pytest.mark.parametrize("exported", ["openvino"], indirect=True)  # int8 for ONNX is refused: test_bad_arguments
def test_openvino_int8_export(exported, reference, tmp_path, tiny_dir):
    fmt, float_out, _ = exported
    out = tmp_path / "int8"
    result = altclip("export", tiny_dir, "--to", "openvino", "--int8", "--out", out)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["weights"].startswith("int8")  # stdout: the one JSON line, no NNCF table
    manifest = json.loads((out / "altclip_export.json").read_text())
    assert manifest["weights"].startswith("int8") and manifest["graphs"] == {"text": "text.xml", "image": "image.xml"}
    for tower in ("text", "image"):  # the parity the manifest states is the int8 graphs' own, printed too
        assert 0.995 < manifest["parity"][tower]["min_cosine"] < 1.0
        assert f"{tower}: max |difference| to torch fp32" in result.stderr
        assert (out / f"{tower}.bin").stat().st_size < 0.6 * (float_out / f"{tower}.bin").stat().st_size
    tokens, pixels, text, image = reference  # and against transformers, with another batch and sequence length
    inputs = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
    assert F.cosine_similarity(torch.from_numpy(run(fmt, out, "text", inputs)), text).min() > 0.995
    assert F.cosine_similarity(torch.from_numpy(run(fmt, out, "image", {"pixel_values": pixels[:2]})), image[:2]).min() > 0.995


def test_bad_arguments(tiny_dir, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    result = altclip("export", tiny_dir, "--to", "onnx", "--out", tmp_path / "full")
    assert result.returncode == 1 and result.stderr.strip().endswith("is not empty: pass --overwrite to write into it")
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    result = altclip("export", tiny_dir, "--to", "tensorrt", "--out", tmp_path / "o")
    assert result.returncode == 2 and "invalid choice: 'tensorrt'" in result.stderr
    result = altclip("export", tmp_path / "no-such-model", "--to", "onnx", "--out", tmp_path / "o2")
    assert result.returncode == 1 and "no-such-model" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    (tmp_path / "afile").write_text("")
    result = altclip("export", tiny_dir, "--to", "onnx", "--out", tmp_path / "afile")
    assert result.returncode == 1 and "exists and is not a folder" in result.stderr
    result = altclip("export", tiny_dir, "--to", "onnx", "--int8", "--out", tmp_path / "o3")
    assert result.returncode == 1
    assert result.stderr.strip().endswith("--int8 is OpenVINO's (NNCF int8 weights): use --to openvino")
    assert not (tmp_path / "o3").exists()
