"""AltCLIP for sentence-transformers: texts in any language and images, embedded into one space.

``load(name)`` gives a plain ``SentenceTransformer`` whose input module, :class:`AltCLIPModule`,
runs the shared core. Saved folders reload with ``SentenceTransformer(folder, trust_remote_code=True)``
(the module class lives in this package, not in sentence-transformers); ``export_native`` writes a
folder on sentence-transformers' own ``Transformer`` module that needs no code from this package.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modality import is_image_url_or_path, is_message_dict
from sentence_transformers.base.modules import InputModule, Normalize, Transformer

from altclip_adapters import __version__
from altclip_adapters.atomic import atomic_write, honour_umask, write_bytes
from altclip_adapters.model.files import SENTENCEPIECE_MODEL
from altclip_adapters.model.hf import quiet_transformers
from altclip_adapters.model.core import AltCLIP
from altclip_adapters.model.processor import DEFAULT_CONTEXT_LENGTH, AltCLIPProcessor, UnreadableImageError

MODALITIES = ["text", "image"]
# sentence-transformers' own Transformer module on a transformers AltCLIPModel: the same projections.
NATIVE_MODALITY_CONFIG = {
    "text": {"method": "get_text_features", "method_output_name": "pooler_output"},
    "image": {"method": "get_image_features", "method_output_name": "pooler_output"},
}
# What a BAAI/AltCLIP folder holds and sentence-transformers' own Transformer module does not write.
BAAI_EXTRA_FILES = [SENTENCEPIECE_MODEL, "special_tokens_map.json", "preprocessor_config.json"]
# Written into config_sentence_transformers.json: a machine without this package gets an install hint.
REQUIREMENTS = {
    "altclip-adapters": {
        "specifier": f">={__version__}",
        "reason": "The input module altclip_adapters.integrations.sentence_transformers.AltCLIPModule comes from this package.",
    }
}


class AltCLIPModule(InputModule):
    """AltCLIP's text and image towers as a sentence-transformers input module.

    Texts are truncated at ``max_seq_length`` tokens (77 by default, as AltCLIP was trained; at
    most 512). Images are PIL images, ``pathlib.Path`` objects, uint8 arrays (HWC or CHW), image
    file path strings, image URLs or ``data:image/...`` URIs; one batch may mix texts and images. Outputs
    ``sentence_embedding`` in input order (the unnormalised projection; follow it with ``Normalize`` for cosine
    similarity).

    Args:
        model: an ``AltCLIP`` loaded with its processor (``AltCLIP.from_pretrained``).
        max_seq_length: the text token cap, ``<s>`` and ``</s>`` included (2 to 512).

    Raises:
        ValueError: the model has no processor, or ``max_seq_length`` is out of range.
    """

    # The module's own settings; the folder's config.json stays the transformers AltCLIP config.
    config_file_name = "altclip_sentence_transformers.json"
    config_keys = ["max_seq_length"]
    save_in_root = True

    def __init__(self, model: AltCLIP, max_seq_length: int = DEFAULT_CONTEXT_LENGTH):
        super().__init__()
        if not isinstance(model.processor, AltCLIPProcessor):
            raise ValueError("the AltCLIP model has no processor: load it with AltCLIP.from_pretrained(...)")
        self.model = model
        self.max_seq_length = max_seq_length

    @property
    def modalities(self) -> list[str]:
        """Texts, images and, so that sentence-transformers passes a batch mixing them, ``"message"``."""
        return [*MODALITIES, "message"]

    @property
    def processor(self) -> AltCLIPProcessor:
        """The checkpoint's processor (tokenizer and image transform)."""
        return self.model.processor

    @property
    def tokenizer(self):
        """The checkpoint's XLM-R tokenizer (what sentence-transformers' trainer and ``tokenize`` use)."""
        return self.model.processor.tokenizer

    @property
    def max_seq_length(self) -> int:
        """The text token cap; setting it checks it (an integer from 2 to 512, else ValueError)."""
        return self.model.processor.context_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.model.processor.context_length = AltCLIPProcessor._check_context_length(value)

    def get_embedding_dimension(self) -> int:
        """The embedding size (``projection_dim``: 768 for the released checkpoints)."""
        return self.model.config.projection_dim

    def preprocess(self, inputs: Sequence[Any], prompt: str | None = None, **kwargs) -> dict[str, Any]:
        """Model inputs for a batch of texts and images in any mix: ``input_ids`` / ``attention_mask`` for the
        texts (``prompt`` prepended), ``pixel_values`` for the images, and, for a mix, each one's place in the
        batch (``text_positions``, ``image_positions``). ``modality`` is ``"text"``, ``"image"`` or, for a mix,
        ``"message"`` (what sentence-transformers calls a mixed batch). An empty batch is an empty text batch.

        A caller's ``max_length`` (the trainer's) overrides ``max_seq_length`` for this batch.

        Raises:
            ValueError: an input that is neither a text nor an image (a chat message, a pair, None, a dict with
                both), naming it; an image's array of unsupported dtype or shape.
            UnreadableImageError: an image that cannot be decoded (a ``ValueError``).
            FileNotFoundError: a ``pathlib.Path`` that does not exist.
        """
        kinds = [_input_kind(item) for item in inputs]
        texts = [_unwrap(item) for item, kind in zip(inputs, kinds) if kind == "text"]
        images = [_unwrap(item) for item, kind in zip(inputs, kinds) if kind == "image"]
        features: dict[str, Any] = {"modality": "message" if texts and images else "image" if images else "text"}
        if texts or not images:
            texts = [prompt + text for text in texts] if prompt else texts
            length = kwargs.get("max_length") or self.max_seq_length
            features.update(self.processor.tokenize(texts, context_length=length))
        if images:
            features["pixel_values"] = torch.stack([self._pixels(image) for image in images])
        if texts and images:
            features["text_positions"] = torch.tensor([i for i, kind in enumerate(kinds) if kind == "text"])
            features["image_positions"] = torch.tensor([i for i, kind in enumerate(kinds) if kind == "image"])
        return features

    def _pixels(self, image: Any) -> torch.Tensor:
        """Pixel values of one image (path, URL, ``data:`` URI, PIL image, array...) by
        :func:`altclip_adapters.model.images.load_image`'s rules; errors name the input (batches are reordered)."""
        try:
            return self.processor.image_transform(image)
        except (UnreadableImageError, FileNotFoundError):
            raise  # the message names the input
        except (ValueError, TypeError) as e:  # an array's dtype or shape
            raise type(e)(f"{e} (input: {_describe(image)})") from e

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        """Adds ``sentence_embedding`` [N, projection_dim] (the model's dtype) to ``features``: the texts' and the
        images' projections, unnormalised, in input order."""
        parts = []
        if "input_ids" in features:
            text = self.model.encode_text(features["input_ids"], features["attention_mask"])
            parts.append((features.get("text_positions"), text))
        if "pixel_values" in features:
            image = self.model.encode_image(features["pixel_values"].to(self.model.dtype))
            parts.append((features.get("image_positions"), image))
        if len(parts) == 1:
            features["sentence_embedding"] = parts[0][1]
        else:  # a mixed batch: put each embedding back in its input's place
            positions, embeddings = zip(*parts)
            features["sentence_embedding"] = torch.cat(embeddings)[torch.cat(positions).argsort()]
        return features

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        """Write the checkpoint in the BAAI/AltCLIP layout (config.json, model.safetensors, tokenizer,
        preprocessor config), this module's config, and the package requirement of the model."""
        self.model.save_pretrained(output_path)
        self.save_config(output_path)
        model_config = Path(output_path) / "config_sentence_transformers.json"
        if model_config.is_file():  # written by SentenceTransformer.save just before the modules
            data = json.loads(model_config.read_text())
            data["requirements"] = {**data.get("requirements", {}), **REQUIREMENTS}
            with atomic_write(model_config, "w") as file:
                json.dump(data, file, indent=2, sort_keys=True)

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        init_defaults: dict[str, Any] | None = None,
        **kwargs,
    ) -> AltCLIPModule:
        """Load from a folder written by :meth:`save`, locally or on the Hugging Face hub (sentence-transformers
        calls this with its hub arguments).

        ``model_kwargs={"dtype": torch.bfloat16}`` (or ``torch_dtype``) picks the weights' dtype.

        Raises:
            FileNotFoundError: no such folder or hub repo.
        """
        hub = {"token": token, "cache_folder": cache_folder, "revision": revision, "local_files_only": local_files_only}
        config = {**(init_defaults or {}), **cls.load_config(model_name_or_path, subfolder=subfolder, **hub)}
        folder = cls.load_dir_path(model_name_or_path, subfolder=subfolder, **hub)
        if folder is None:
            raise FileNotFoundError(f"cannot find {model_name_or_path!r}/{subfolder}: no such folder or hub repo")
        model_kwargs = model_kwargs or {}
        dtype = model_kwargs.get("dtype", model_kwargs.get("torch_dtype"))
        dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
        core = AltCLIP.from_pretrained(folder, dtype=dtype if isinstance(dtype, torch.dtype) else None)
        return cls(core, **config)


def _unwrap(item: Any) -> Any:
    """The value of a one-key ``{"text": ...}`` / ``{"image": ...}`` dict, else the item itself."""
    return next(iter(item.values())) if isinstance(item, dict) else item


def _describe(item: Any) -> str:
    """A short name for one input, for error messages (batches are reordered by length)."""
    if isinstance(item, (np.ndarray, torch.Tensor)):
        return f"{type(item).__name__} of shape {tuple(item.shape)} and dtype {item.dtype}"
    if isinstance(item, Image.Image):
        return f"PIL image {item.width}x{item.height} ({item.mode})"
    text = repr(item)
    return text if len(text) <= 80 else text[:77] + "..."


def _input_kind(item: Any) -> str:
    """``"text"`` or ``"image"`` for one input, by sentence-transformers' rules; raises ValueError naming it
    (not TypeError, which sentence-transformers takes as a cue to retry without the prompt)."""
    if is_message_dict(item) or (isinstance(item, list) and item and is_message_dict(item[0])):
        raise ValueError(
            f"input {_describe(item)} is a chat message; AltCLIP embeds texts and images (pass the text or image itself)"
        )
    if isinstance(item, dict):
        if len(item) != 1 or next(iter(item)) not in MODALITIES:
            raise ValueError(
                f"input {_describe(item)}: AltCLIP takes {{'text': ...}} or {{'image': ...}}, one modality per input"
            )
        kind, value = next(iter(item.items()))
        if kind == "text" and not isinstance(value, str):
            raise ValueError(f"input {_describe(item)}: the 'text' value is a {type(value).__name__}, not a string")
        return kind if kind == "image" else _input_kind(value)
    if item is None:
        raise ValueError("an input is None; expected a text or an image")
    if isinstance(item, str):
        # As sentence-transformers documents: an existing image file, image URL or data URI is an image.
        return "image" if is_image_url_or_path(item) else "text"
    if isinstance(item, (Image.Image, Path, np.ndarray, torch.Tensor)):
        return "image"
    if isinstance(item, (list, tuple)):
        raise ValueError(
            f"input {_describe(item)} is a nested {type(item).__name__}; AltCLIP embeds single texts or images "
            "(pass one flat list, no pairs)"
        )
    raise ValueError(
        f"input {_describe(item)} is a {type(item).__name__}; expected a string, a PIL image, a pathlib.Path "
        "or a uint8 array"
    )


def load(
    name_or_path: str | Path,
    *,
    normalize: bool = True,
    context_length: int | None = None,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    revision: str | None = None,
    **kwargs,
) -> SentenceTransformer:
    """A ``SentenceTransformer`` for AltCLIP, without ``trust_remote_code``.

    Args:
        name_or_path: a registry name (``"AltCLIP"``), a hub id (``"BAAI/AltCLIP"``), a checkpoint folder, or a
            sentence-transformers folder saved from one (its modules are checked to be sentence-transformers' or
            this package's before any is imported).
        normalize: append a ``Normalize`` module (unit vectors; similarity is cosine either way).
        context_length: the text token cap (default 77, at most 512).
        device: where the model runs (sentence-transformers' default: a GPU when there is one).
        dtype: the weights' dtype (``torch.bfloat16``, ``torch.float16``; default float32).
        revision: the hub revision.
        **kwargs (Any): passed to ``SentenceTransformer``; they win over this function's defaults
            (``similarity_fn_name="cosine"``; for a saved folder ``trust_remote_code=True``).

    Returns:
        ``AltCLIPModule`` -> ``Normalize``: ``encode`` gives float32 [N, projection_dim] arrays (or tensors).

    Raises:
        ValueError: a saved folder that names module classes from elsewhere, or a checkpoint that does not fit its
            architecture.
        FileNotFoundError: the checkpoint cannot be had (see ``AltCLIP.from_pretrained``).
    """
    path = Path(name_or_path).expanduser()
    if (path / "modules.json").is_file():
        return _load_saved(path, context_length=context_length, device=device, dtype=dtype, **kwargs)
    core = AltCLIP.from_pretrained(name_or_path, dtype=dtype, revision=revision)
    modules = [AltCLIPModule(core, context_length or DEFAULT_CONTEXT_LENGTH)] + ([Normalize()] if normalize else [])
    return SentenceTransformer(modules=modules, device=device, **{"similarity_fn_name": "cosine", **kwargs})


def _load_saved(
    path: Path, *, context_length: int | None, device: str | None, dtype: torch.dtype | None, **kwargs
) -> SentenceTransformer:
    """A saved sentence-transformers folder whose modules come from this package or sentence-transformers."""
    types = [entry["type"] for entry in json.loads((path / "modules.json").read_text())]
    ours = (f"{__name__}.", "altclip_adapters.sentence_transformers.")  # the module's path now, and before 0.2
    foreign = [t for t in types if not t.startswith(("sentence_transformers.", *ours))]
    if foreign:
        raise ValueError(
            f"{path} uses module classes from outside sentence-transformers and altclip_adapters "
            f"({', '.join(foreign)}); if you trust them: SentenceTransformer(folder, trust_remote_code=True)"
        )
    model_kwargs = {**kwargs.pop("model_kwargs", {}), **({"dtype": dtype} if dtype is not None else {})}
    # Only classes checked above are imported, so trusting the folder's code is safe here.
    options = {"trust_remote_code": True, **kwargs, "model_kwargs": model_kwargs}
    with quiet_transformers():  # a native folder loads through transformers, which draws a progress bar
        model = SentenceTransformer(str(path), device=device, **options)
    if context_length is not None:
        model.max_seq_length = context_length
    return model


def is_native_folder(path: str | Path) -> bool:
    """Whether ``path`` is a sentence-transformers folder written by :func:`export_native`: sentence-transformers' own
    module at its root, over a transformers AltCLIP checkpoint that ``AltCLIP.from_pretrained`` reads as it is."""
    path = Path(path).expanduser()
    try:
        first = json.loads((path / "modules.json").read_text())[0]
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return False
    if not isinstance(first, dict) or not isinstance(config, dict):
        return False
    own_module = first.get("path") == "" and str(first.get("type", "")).startswith("sentence_transformers.")
    return own_module and config.get("model_type") == "altclip"


def altclip_module(model: SentenceTransformer) -> AltCLIPModule:
    """The :class:`AltCLIPModule` a ``SentenceTransformer`` starts with; raises TypeError otherwise."""
    first = model[0] if len(model) else None
    if not isinstance(first, AltCLIPModule):
        raise TypeError(f"this SentenceTransformer starts with {type(first).__name__}, not AltCLIPModule")
    return first


def save_checkpoint(model: SentenceTransformer, folder: str | Path) -> Path:
    """Write the (e.g. fine-tuned) AltCLIP of ``model`` as a BAAI/AltCLIP-layout checkpoint folder,
    which ``transformers.AltCLIPModel``, ``AltCLIP.from_pretrained`` and every adapter load.

    Args:
        model: a ``SentenceTransformer`` from :func:`load` (its first module an ``AltCLIPModule``).
        folder: where to write (created if missing).

    Returns:
        ``folder`` as a ``Path``.

    Raises:
        TypeError: the model does not start with an ``AltCLIPModule``.
    """
    altclip_module(model).model.save_pretrained(folder)
    return Path(folder)


def export_native(
    model_or_name: SentenceTransformer | AltCLIP | str | Path,
    folder: str | Path,
    *,
    context_length: int | None = None,
) -> Path:
    """Write a sentence-transformers folder on its own ``Transformer`` module over a transformers
    AltCLIP checkpoint (text and image modalities, text length cap, ``Normalize``, cosine).

    It loads with a bare ``SentenceTransformer(folder)`` where this package is not installed, and
    gives the same embeddings (one call per modality: sentence-transformers' module does not mix them). The folder
    also holds the BAAI/AltCLIP files the ``Transformer`` module does not write (``BAAI_EXTRA_FILES``); file
    modes follow the umask.

    Args:
        model_or_name: a model from :func:`load` (its prompts are kept), an ``AltCLIP`` core, or a registry name,
            hub id or checkpoint folder.
        folder: where to write (created if missing).
        context_length: the text token cap (default: the model's, 77).

    Returns:
        ``folder`` as a ``Path``.

    Raises:
        TypeError: a ``SentenceTransformer`` that does not start with an ``AltCLIPModule``.
        ValueError: a ``context_length`` out of range (2 to 512).
    """
    prompts = None
    if isinstance(model_or_name, SentenceTransformer):
        module = altclip_module(model_or_name)
        core, length, prompts = module.model, module.max_seq_length, model_or_name.prompts
    elif isinstance(model_or_name, AltCLIP):
        core, length = model_or_name, model_or_name.processor.context_length
    else:
        core = AltCLIP.from_pretrained(model_or_name)
        length = core.processor.context_length
    length = AltCLIPProcessor._check_context_length(context_length or length)
    with tempfile.TemporaryDirectory() as checkpoint, quiet_transformers():  # no transformers progress bars
        core.save_pretrained(checkpoint)
        transformer = Transformer(
            checkpoint,
            modality_config=NATIVE_MODALITY_CONFIG,
            module_output_name="sentence_embedding",
            max_seq_length=length,
        )
        native = SentenceTransformer(
            modules=[transformer, Normalize()], device="cpu", prompts=prompts, similarity_fn_name="cosine"
        )
        native.save(str(folder))
        folder = Path(folder)
        for name in BAAI_EXTRA_FILES:  # the rest of the BAAI/AltCLIP file set, for slow tokenizers and FlagAI
            if not (folder / name).exists():
                write_bytes(folder / name, (Path(checkpoint) / name).read_bytes())
    for weights in folder.rglob("*.safetensors"):  # transformers writes them 0600 (safetensors 0.8)
        honour_umask(weights)
    return folder
