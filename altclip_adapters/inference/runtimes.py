"""How an :class:`~altclip_adapters.inference.embedder.Embedder` runs the two towers: a strategy, not a second pipeline.

- ``"torch"``: the core model itself (any device, any dtype, int8, ``torch.compile``).
- ``"openvino"`` (extra ``openvino``, CPU only): both towers converted once from the core model with
  ``ov.convert_model`` (dynamic batch and sequence length: a batch of texts is padded to its own longest text,
  never to 77), cached under :func:`cache_dir` keyed by the weights, the shapes, the OpenVINO version and this
  module's conversion version (a stale or damaged cache is rebuilt). By default each tower runs at
  ``INFERENCE_PRECISION_HINT`` ``bf16`` where the CPU has BF16 (``OPTIMIZATION_CAPABILITIES``) and bf16 keeps this
  checkpoint's embeddings at cosine >= :data:`FIDELITY` to f32, measured once per checkpoint on
  :func:`probe_inputs` and kept in the cache's manifest; at ``f32`` otherwise. bf16's fidelity depends on the
  weights: at BAAI/AltCLIP's shapes images keep 0.9998 on every random checkpoint we built, texts 0.9998 with
  transformers' initialisation but 0.9982-0.9990 with ``tiny``'s perturbed weights (where texts then stay f32). Precision ``bf16``
  / ``f32`` applies to both towers; ``int8`` stores every weight in int8 (NNCF weight compression,
  ``INT8_ASYM``, per channel), activations in bf16 (f32 without BF16).
- ``"auto"`` (the default, or ``$ALTCLIP_RUNTIME``): OpenVINO (each tower bf16 where its fidelity holds, else
  f32; int8 weights with ``int8=True``) on a CPU that has BF16 when OpenVINO is installed and no torch-only option
  (``dtype``, ``compile``) was asked for; torch otherwise (GPUs always). tests/test_runtime.py holds the choice at
  BAAI/AltCLIP's widths (cosine >= 0.9995 to fp32 for what the default runs).

The tower wrappers (:class:`TextTower`, :class:`ImageTower`) are also what ``altclip export`` writes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from altclip_adapters.atomic import atomic_path, write_json

if TYPE_CHECKING:
    from altclip_adapters.model.core import AltCLIP

Runtime = Literal["auto", "torch", "openvino"]
RUNTIMES: tuple[str, ...] = ("auto", "torch", "openvino")
RUNTIME_ENV = "ALTCLIP_RUNTIME"  # the default runtime when none is given
CACHE_ENV = "ALTCLIP_CACHE"  # where converted models are cached (default ~/.cache/altclip_adapters)
CONVERSION_VERSION = 1  # bump when the graphs this module writes change: older caches are rebuilt
Precision = Literal["f32", "bf16", "int8"]
MANIFEST = "altclip_openvino.json"  # written last into a conversion's folder, naming its key
FIDELITY = 0.9995  # the least cosine to f32 a default precision must keep on probe_inputs


class TextTower(nn.Module):
    """``(input_ids int64 [B, T], attention_mask int64 [B, T]) -> text_embeds float32 [B, projection_dim]``,
    unnormalised (``AltCLIPModel.get_text_features``)."""

    def __init__(self, model: AltCLIP):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled, _, _ = self.model.text(input_ids, attention_mask)
        return self.model.text_projection(pooled)


class ImageTower(nn.Module):
    """``pixel_values float32 [B, 3, S, S] (normalised) -> image_embeds float32 [B, projection_dim]``,
    unnormalised (``AltCLIPModel.get_image_features``)."""

    def __init__(self, model: AltCLIP):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.visual_projection(self.model.vision.pool(pixel_values))


def import_openvino():
    try:
        import openvino
    except ImportError as e:
        raise ImportError("runtime 'openvino' needs OpenVINO: pip install 'altclip-adapters[openvino]'") from e
    return openvino


def openvino_available() -> bool:
    try:
        import_openvino()
    except ImportError:
        return False
    return True


@functools.cache
def openvino_core():
    """The process's one ``openvino.Core``, kept until exit; every compile in this package goes through it.

    One, not one per use: OpenVINO's CPU plugin (2026.4) installs a signal stack for the thread that creates a
    Core and, when that Core is destroyed, puts back the one it found; Cores destroyed in the order they were made
    leave a freed stack installed, and the next signal with a Python handler (Ctrl-C, SIGTERM, a DataLoader
    worker's SIGCHLD) crashes the process (tests/test_runtime.py holds this)."""
    return import_openvino().Core()


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 natively here (AVX-512 BF16 / AMX)."""
    return "BF16" in openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def resolve_runtime(runtime: str | None, device: torch.device, *, prefer_torch: bool = False) -> str:
    """``"torch"`` or ``"openvino"`` for a requested ``runtime`` (None: ``$ALTCLIP_RUNTIME``, else ``"auto"``).
    ``prefer_torch``: an option only torch serves was given (a dtype, compile), so auto picks torch.
    Raises ValueError for an unknown runtime or OpenVINO off the CPU, ImportError when OpenVINO is asked for
    but not installed."""
    runtime = runtime or os.environ.get(RUNTIME_ENV) or "auto"
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    if runtime == "auto":
        usable = device.type == "cpu" and not prefer_torch and openvino_available()
        return "openvino" if usable and cpu_has_bf16() else "torch"
    if runtime == "openvino":
        if device.type != "cpu":
            raise ValueError(f"runtime 'openvino' runs on the CPU; got device {device}")
        import_openvino()
    return runtime


def cache_dir() -> Path:
    """``$ALTCLIP_CACHE/openvino``, else ``~/.cache/altclip_adapters/openvino``."""
    root = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "altclip_adapters"
    return Path(root) / "openvino"


def weights_digest(model: nn.Module) -> str:
    """sha256 of every parameter and buffer (name, dtype, shape, bytes): the checkpoint's identity."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def cache_key(model: AltCLIP) -> str:
    """What a converted pair depends on: weights, shapes (config), the OpenVINO version, this conversion."""
    ov = import_openvino()
    parts = {
        "weights": weights_digest(model),
        "config": repr(model.config),
        "openvino": ov.__version__,
        "conversion": CONVERSION_VERSION,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def example_inputs(model: AltCLIP) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Small text and image inputs to trace the towers with (their shapes are made dynamic afterwards)."""
    pad = model.config.text.pad_token_id
    ids = torch.full((2, 7), pad + 3, dtype=torch.long)
    ids[:, 0], ids[:, -1] = 0, 2  # <s> ... </s>
    size = model.config.vision.image_size
    return (
        {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
        {"pixel_values": torch.zeros(2, 3, size, size)},
    )


def convert(model: AltCLIP):
    """Both towers of a float32 CPU ``model`` as OpenVINO models ``(text, image)``, batch and sequence dynamic;
    outputs named ``text_embeds`` / ``image_embeds``."""
    import warnings

    ov = import_openvino()
    text_example, image_example = example_inputs(model)
    size = model.config.vision.image_size
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracing warnings about python control flow on shapes: checked by tests
        text = ov.convert_model(
            TextTower(model).eval(),
            example_input=text_example,
            input=[("input_ids", [-1, -1], ov.Type.i64), ("attention_mask", [-1, -1], ov.Type.i64)],
        )
        image = ov.convert_model(
            ImageTower(model).eval(), example_input=image_example, input=[("pixel_values", [-1, 3, size, size], ov.Type.f32)]
        )
    text.outputs[0].get_tensor().set_names({"text_embeds"})
    image.outputs[0].get_tensor().set_names({"image_embeds"})
    return text, image


def save_model(ov_model, xml: Path) -> None:
    """``ov.save_model`` (float32 weights kept) through atomic.py: the .bin first, then the .xml naming it."""
    ov = import_openvino()
    with tempfile.TemporaryDirectory(dir=xml.parent, prefix=".convert.") as tmp:
        ov.save_model(ov_model, Path(tmp) / "model.xml", compress_to_fp16=False)
        for suffix in (".bin", ".xml"):
            with atomic_path(xml.with_suffix(suffix)) as target:
                os.replace(Path(tmp) / f"model{suffix}", target)


def compress_int8(ov_model):
    """``ov_model`` with int8 weights (NNCF ``compress_weights``, INT8_ASYM, per output channel)."""
    try:
        import nncf
    except ImportError as e:
        raise ImportError("OpenVINO int8 needs NNCF: pip install 'altclip-adapters[openvino]'") from e
    # NNCF writes a statistics table (logged at INFO) and a progress bar to stdout, where our results go: the
    # table is dropped, the bar goes to stderr
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    finally:
        logger.setLevel(level)


def cached(folder: Path, key: str, make):
    """``(text, image)`` OpenVINO models read from ``folder`` when its ``altclip_openvino.json`` names ``key``;
    otherwise (absent, stale or unreadable) ``make()``'s, written there first (``text.xml/.bin``,
    ``image.xml/.bin``, then the manifest, last)."""
    ov = import_openvino()
    manifest = folder / MANIFEST
    try:
        if json.loads(manifest.read_text())["key"] == key:
            core = openvino_core()
            return core.read_model(folder / "text.xml"), core.read_model(folder / "image.xml")
    except (OSError, ValueError, KeyError, RuntimeError):
        pass  # absent, stale or damaged: convert again
    text, image = make()
    folder.mkdir(parents=True, exist_ok=True)
    manifest.unlink(missing_ok=True)
    save_model(text, folder / "text.xml")
    save_model(image, folder / "image.xml")
    write_json(manifest, {"key": key, "openvino": ov.__version__, "conversion": CONVERSION_VERSION})
    return text, image


def converted(model: AltCLIP, folder: Path | None = None, *, int8: bool = False):
    """``(graphs, int8_graphs, manifest)``: the float ``(text, image)`` OpenVINO models of ``model``, cached in
    ``folder`` (default ``cache_dir() / cache_key(model)``); with ``int8`` the same with int8 weights, cached in the
    sibling ``FOLDER-int8`` (else None); the path of the float folder's manifest."""
    key = cache_key(model)
    folder = Path(folder) if folder is not None else cache_dir() / key
    graphs = cached(folder, key, lambda: convert(model))
    int8_graphs = cached(folder.with_name(f"{folder.name}-int8"), f"{key}-int8", lambda: tuple(map(compress_int8, graphs))) if int8 else None
    return graphs, int8_graphs, folder / MANIFEST


def probe_inputs(model: AltCLIP) -> tuple[dict, dict]:
    """The inputs a precision's fidelity is measured on, seeded: 8 texts of 4 to 77 tokens (random ids of the
    vocabulary, one batch padded to the longest) and 4 images of N(0, 1) normalised pixels, as numpy arrays."""
    generator = torch.Generator().manual_seed(0)
    text = model.config.text
    lengths = [min(n, text.max_positions - 2) for n in (4, 6, 9, 14, 20, 30, 50, 77)]
    ids = torch.randint(3, text.vocab_size, (len(lengths), max(lengths)), generator=generator)
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, 0], ids[row, length - 1], ids[row, length:], mask[row, :length] = 0, 2, text.pad_token_id, 1
    size = model.config.vision.image_size
    pixels = torch.randn(4, 3, size, size, generator=generator)
    return {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}, {"pixel_values": pixels.numpy()}


def measure_fidelity(model: AltCLIP, name: str, hint: str, reference, graphs, manifest: Path) -> dict[str, float]:
    """Least cosine similarity, per tower (``{"text": ..., "image": ...}``), of ``graphs`` (text, image) compiled at
    ``hint`` to the float ``reference`` graphs compiled at f32, on :func:`probe_inputs`. Measured once per
    checkpoint: kept under ``fidelity[name]`` in ``manifest`` (the float conversion's ``altclip_openvino.json``)."""
    record = json.loads(manifest.read_text())
    if name in record.get("fidelity", {}):
        return record["fidelity"][name]
    core, scores = openvino_core(), {}
    for tower, inputs, ref, graph in zip(("text", "image"), probe_inputs(model), reference, graphs):
        outputs = [core.compile_model(g, "CPU", {"INFERENCE_PRECISION_HINT": h})(inputs)[0] for g, h in ((ref, "f32"), (graph, hint))]
        scores[tower] = round(float(nn.functional.cosine_similarity(*map(torch.from_numpy, outputs)).min()), 6)
    record["fidelity"] = {**record.get("fidelity", {}), name: scores}
    write_json(manifest, record)
    return scores


class OpenVINOTowers:
    """Both towers of ``model`` compiled for OpenVINO's CPU plugin at ``precision`` (``"bf16"``, ``"f32"`` or
    ``"int8"``: int8 weights, bf16 activations where the CPU has them), with as many threads as torch uses.

    ``precision=None`` (the default) runs each tower at bf16 where the CPU has it and this checkpoint's bf16 keeps
    the least cosine to f32 on :func:`probe_inputs` at or above :data:`FIDELITY` (measured once, at the first
    conversion: :func:`measure_fidelity`), at f32 otherwise. ``self.precision`` says what runs: one name, or
    ``"IMAGE+TEXT"`` when the towers differ (``"bf16+f32"``); ``self.fidelity`` the measured cosines (empty at f32).
    ``encode_text`` / ``encode_image`` take and return what :meth:`AltCLIP.encode_text` / ``encode_image`` do
    (float32 CPU tensors). One inference request per tower, used by one thread at a time."""

    def __init__(self, model: AltCLIP, precision: Precision | None = None, *, cache: Path | None = None):
        if precision not in (None, "bf16", "f32", "int8"):
            raise ValueError(f"OpenVINO precision must be bf16, f32 or int8; got {precision!r}")
        bf16 = "bf16" if cpu_has_bf16() else "f32"
        reference, int8_graphs, manifest = converted(model, cache, int8=precision == "int8")
        graphs = int8_graphs or reference
        name = f"int8 {bf16}" if int8_graphs else bf16
        measured = precision != "f32" and name != "f32"
        self.fidelity = measure_fidelity(model, name, bf16, reference, graphs, manifest) if measured else {}
        if precision is None:
            hints = tuple(bf16 if self.fidelity.get(tower, 0.0) >= FIDELITY else "f32" for tower in ("image", "text"))
        else:
            hints = (bf16, bf16) if precision == "int8" else (precision, precision)
        self.precision = "int8" if precision == "int8" else hints[0] if hints[0] == hints[1] else "+".join(hints)
        self.projection_dim = model.config.projection_dim
        self.pad_token_id = model.config.text.pad_token_id
        core = openvino_core()
        requests = []
        for graph, hint in zip(reversed(graphs), hints):
            config = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY"}
            requests.append(core.compile_model(graph, "CPU", config).create_infer_request())
        self._image, self._text = requests
        self._lock = threading.Lock()

    def _run(self, request, inputs: dict) -> torch.Tensor:
        with self._lock:
            request.infer({k: v.cpu().numpy() for k, v in inputs.items()})
            return torch.from_numpy(request.get_output_tensor(0).data.copy())

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, normalize: bool = False) -> torch.Tensor:
        """Text embeddings [B, projection_dim] float32."""
        if input_ids.shape[0] == 0:
            return torch.zeros(0, self.projection_dim)
        mask = attention_mask if attention_mask is not None else input_ids != self.pad_token_id
        features = self._run(self._text, {"input_ids": input_ids.long(), "attention_mask": mask.long()})
        return nn.functional.normalize(features, dim=-1) if normalize else features

    def encode_image(self, pixel_values: torch.Tensor, *, normalize: bool = False) -> torch.Tensor:
        """Image embeddings [B, projection_dim] float32 of normalised pixels [B, 3, S, S]."""
        if pixel_values.shape[0] == 0:
            return torch.zeros(0, self.projection_dim)
        features = self._run(self._image, {"pixel_values": pixel_values.float()})
        return nn.functional.normalize(features, dim=-1) if normalize else features
