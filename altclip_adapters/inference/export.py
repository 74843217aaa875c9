"""Deployable graphs of AltCLIP's two towers: ONNX (ONNX Runtime, Triton, onnxruntime-web) or OpenVINO IR.

``export(model, out, to="onnx" | "openvino")`` writes into ``out``:

- ``text.onnx`` + ``image.onnx`` (weights over 1.5 GB go to ``text.onnx.data`` beside it, ONNX's external data),
  or ``text.xml/.bin`` + ``image.xml/.bin``: float32 weights (OpenVINO: int8 with ``int8=True``), the towers
  of :mod:`altclip_adapters.inference.runtimes`
  (``TextTower``: ``input_ids``, ``attention_mask`` int64 [batch, sequence] -> ``text_embeds`` float32
  [batch, projection_dim]; ``ImageTower``: ``pixel_values`` float32 [batch, 3, S, S] -> ``image_embeds``),
  batch and sequence dynamic, embeddings unnormalised (``AltCLIPModel.get_*_features``);
- the checkpoint's tokenizer and preprocessing files (``AltCLIPProcessor.from_pretrained(out)`` loads them);
- ``altclip_export.json``: inputs, outputs, text and image preprocessing, normalisation, and the parity of the
  written graphs, run in their runtime, against the core model in float32 (max abs difference, min cosine).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F

from altclip_adapters.atomic import atomic_path, write_json
from altclip_adapters.inference.runtimes import ImageTower, TextTower, example_inputs, import_openvino, openvino_core, save_model

if TYPE_CHECKING:
    from altclip_adapters.model.core import AltCLIP

Format = Literal["onnx", "openvino"]
FORMATS: tuple[str, ...] = ("onnx", "openvino")
MANIFEST = "altclip_export.json"
EXTERNAL_DATA_BYTES = 1_500_000_000  # protobuf caps one file at 2 GB: larger graphs keep weights beside


def _onnx(tower: torch.nn.Module, inputs: dict[str, torch.Tensor], output: str, path: Path) -> None:
    """One tower as ONNX (opset 17, TorchScript exporter), dynamic batch and sequence, written atomically."""
    import onnx

    axes = {name: {0: "batch", 1: "sequence"} if name != "pixel_values" else {0: "batch"} for name in inputs}
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export.") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing and exporter deprecation notices
        raw = Path(tmp) / "raw.onnx"
        torch.onnx.export(
            tower.eval(), tuple(inputs.values()), raw, input_names=list(inputs), output_names=[output],
            dynamic_axes={**axes, output: {0: "batch"}}, opset_version=17, dynamo=False,
        )
        graph = onnx.load(raw)  # external tensors (over 2 GB) come back in
        external = sum(t.ByteSize() for t in graph.graph.initializer) > EXTERNAL_DATA_BYTES
        data = f"{path.name}.data"
        onnx.save_model(graph, Path(tmp) / path.name, save_as_external_data=external, location=data)
        for name in ([data] if external else []) + [path.name]:  # the weights first, then the graph naming them
            with atomic_path(path.parent / name) as target:
                os.replace(Path(tmp) / name, target)


def _sample_inputs(model: AltCLIP) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Texts of mixed lengths (padding included) and images, other shapes than the traced ones."""
    generator = torch.Generator().manual_seed(0)
    vocab, pad = model.config.text.vocab_size, model.config.text.pad_token_id
    ids = torch.randint(3, vocab, (3, 13), generator=generator)
    ids[:, 0], mask = 0, torch.ones_like(ids)
    ids[1, 8:], mask[1, 8:] = pad, 0
    ids[0, -1], ids[1, 7], ids[2, -1] = 2, 2, 2
    size = model.config.vision.image_size
    return {"input_ids": ids, "attention_mask": mask}, {"pixel_values": torch.randn(3, 3, size, size, generator=generator)}


def run_graph(path: Path, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Run one exported graph (``.onnx`` in ONNX Runtime, ``.xml`` in OpenVINO f32) on ``inputs``."""
    if path.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {k: v.numpy() for k, v in inputs.items()})[0])
    compiled = openvino_core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return torch.from_numpy(compiled({k: v.numpy() for k, v in inputs.items()})[0].copy())


def export(model: AltCLIP, out: str | Path, to: Format, *, int8: bool = False) -> dict:
    """Write both towers of ``model`` (float32, CPU; needs ``model.processor``) as ``to`` graphs into ``out``,
    with the tokenizer, preprocessing and ``altclip_export.json``; returns that JSON's content. ``int8``
    (OpenVINO only): int8 weights (NNCF weight compression, as ``runtime="openvino", int8=True`` runs), about a
    quarter of the float size; the parity then says how far they move the embeddings. Raises ValueError for an
    unknown format, int8 outside OpenVINO or a model without processor, ImportError naming the missing extra."""
    if to not in FORMATS:
        raise ValueError(f"export format must be one of {', '.join(FORMATS)}; got {to!r}")
    if int8 and to != "openvino":
        raise ValueError("int8 export is OpenVINO's (NNCF int8 weights): use --to openvino")
    if model.processor is None:
        raise ValueError("the model has no processor attached: load it with AltCLIP.from_pretrained")
    if to == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as e:
            raise ImportError("export to onnx needs ONNX: pip install 'altclip-adapters[onnx]'") from e
    else:
        import_openvino()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.float().cpu().eval()
    text_example, image_example = example_inputs(model)
    suffix = ".onnx" if to == "onnx" else ".xml"
    towers = {"text": (TextTower(model), text_example, "text_embeds"), "image": (ImageTower(model), image_example, "image_embeds")}
    with torch.no_grad():
        if to == "onnx":
            for name, (tower, example, output) in towers.items():
                _onnx(tower, example, output, out / f"text{suffix}".replace("text", name))
        else:
            from altclip_adapters.inference.runtimes import compress_int8, convert

            text, image = convert(model)
            if int8:
                text, image = compress_int8(text), compress_int8(image)
            save_model(text, out / "text.xml")
            save_model(image, out / "image.xml")
    model.processor.save_pretrained(out)
    parity = {}
    text_inputs, image_inputs = _sample_inputs(model)
    with torch.inference_mode():
        expected = {"text": model.encode_text(**text_inputs), "image": model.encode_image(**image_inputs)}
    for name, inputs in (("text", text_inputs), ("image", image_inputs)):
        got = run_graph(out / f"{name}{suffix}", inputs)
        parity[name] = {
            "max_abs_diff": float((got - expected[name]).abs().max()),
            "min_cosine": float(F.cosine_similarity(got, expected[name]).min()),
        }
    transform = model.processor.image_transform.to_preprocessor_config()
    size = model.config.vision.image_size
    manifest = {
        "format": to,
        "weights": "int8 (NNCF INT8_ASYM, per output channel; activations float)" if int8 else "float32",
        "graphs": {"text": f"text{suffix}", "image": f"image{suffix}"},
        "inputs": {
            "text": {
                "input_ids": {"dtype": "int64", "shape": ["batch", "sequence"]},
                "attention_mask": {"dtype": "int64", "shape": ["batch", "sequence"], "values": "1 token, 0 padding"},
            },
            "image": {"pixel_values": {"dtype": "float32", "shape": ["batch", 3, size, size]}},
        },
        "outputs": {
            "text": {"text_embeds": {"dtype": "float32", "shape": ["batch", model.config.projection_dim]}},
            "image": {"image_embeds": {"dtype": "float32", "shape": ["batch", model.config.projection_dim]}},
        },
        "text_preprocessing": {
            "tokenizer": "tokenizer.json (XLM-R sentencepiece; <s> text </s>)",
            "max_length": model.processor.context_length,
            "pad_token_id": model.config.text.pad_token_id,
            "padding": "to the batch's longest text, attention_mask 0 on padding",
        },
        "image_preprocessing": {"file": "preprocessor_config.json", **transform},
        "normalisation": "outputs are unnormalised projections; divide each row by its L2 norm for cosine similarity",
        "parity": {"reference": "altclip_adapters AltCLIP, float32, torch (equal to transformers.AltCLIPModel)", **parity},
    }
    write_json(out / MANIFEST, manifest)
    return manifest
