"""Turn texts (any language) and images into AltCLIP inputs, exactly as ``AltCLIPProcessor`` does."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from altclip_adapters.model.images import DEFAULT_MAX_IMAGE_PIXELS, ImageInput, UnreadableImageError, is_one_image, load_image

__all__ = [
    "DEFAULT_CONTEXT_LENGTH",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "AltCLIPProcessor",
    "ImageInput",
    "ImageTransform",
    "UnreadableImageError",
    "load_image",
]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_RESAMPLE = {2: "BILINEAR", 3: "BICUBIC"}  # PIL codes in preprocessor configs -> torchvision InterpolationMode
DEFAULT_CONTEXT_LENGTH = 77  # what the AltCLIP authors trained with
MAX_RESIZE_RATIO = 32  # past this many crops' worth of resized pixels, only the crop's region is computed


@dataclass
class ImageTransform:
    """Resize the shortest edge, centre-crop, rescale and normalise: ``CLIPImageProcessor``'s arithmetic.

    Attributes:
        shortest_edge: the shortest edge after resizing, in pixels.
        crop_size: (height, width) of the centre crop, in pixels.
        resample: PIL's filter code: 3 (bicubic) or 2 (bilinear).
        rescale_factor: what 8-bit values are multiplied by before normalising (1 / 255).
        mean: per RGB channel, of rescaled values.
        std: per RGB channel, of rescaled values.

    Raises:
        ValueError: (on construction) a ``resample`` other than 2 or 3.
    """

    shortest_edge: int = 224
    crop_size: tuple[int, int] = (224, 224)
    resample: int = 3
    rescale_factor: float = 1 / 255
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    std: tuple[float, ...] = OPENAI_CLIP_STD
    _norm: tuple[torch.Tensor, torch.Tensor] = field(init=False, repr=False)

    def __post_init__(self):
        if self.resample not in _RESAMPLE:
            raise ValueError(f"unsupported resample {self.resample}; expected 2 (bilinear) or 3 (bicubic)")
        # transformers fuses rescale into normalisation; the same float arithmetic gives the same bits
        self._norm = (torch.tensor(self.mean) * (1.0 / self.rescale_factor), torch.tensor(self.std) * (1.0 / self.rescale_factor))

    @classmethod
    def from_preprocessor_config(cls, data: dict[str, Any]) -> ImageTransform:
        """The transform a ``preprocessor_config.json`` (``CLIPImageProcessor``'s keys) describes; a missing key
        takes CLIP's value."""
        size, crop = data.get("size", {}), data.get("crop_size", {})
        size = size.get("shortest_edge", 224) if isinstance(size, dict) else int(size)
        crop = (crop.get("height", 224), crop.get("width", 224)) if isinstance(crop, dict) else (int(crop), int(crop))
        return cls(
            shortest_edge=size,
            crop_size=crop,
            resample=data.get("resample", 3),
            rescale_factor=data.get("rescale_factor", 1 / 255),
            mean=tuple(data.get("image_mean", OPENAI_CLIP_MEAN)),
            std=tuple(data.get("image_std", OPENAI_CLIP_STD)),
        )

    def to_preprocessor_config(self) -> dict[str, Any]:
        """The ``preprocessor_config.json`` of ``CLIPImageProcessor`` for this transform (transformers loads it)."""
        return {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": True,
            "size": {"shortest_edge": self.shortest_edge},
            "resample": self.resample,
            "do_center_crop": True,
            "crop_size": {"height": self.crop_size[0], "width": self.crop_size[1]},
            "do_rescale": True,
            "rescale_factor": self.rescale_factor,
            "do_normalize": True,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "do_convert_rgb": True,
        }

    def resize_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) in pixels after resizing an image of ``height`` x ``width`` to ``shortest_edge``, rounded
        down as transformers rounds it."""
        s = self.shortest_edge
        if min(height, width) == s:
            return height, width
        return (int(s * height / width), s) if width < height else (s, int(s * width / height))

    def uint8(self, image: ImageInput, *, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> torch.Tensor:
        """Resized and cropped pixels of one image: the part of preprocessing that can run in data-loader workers.

        Args:
            image: anything :func:`load_image` takes.
            max_image_pixels: as in :func:`load_image`.

        Returns:
            uint8 [3, crop height, crop width] on the CPU.

        Raises:
            UnreadableImageError: and the other errors of :func:`load_image`.
        """
        image = load_image(image, max_image_pixels=max_image_pixels)
        return self.resize_crop(torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous())

    def resize_crop(self, pixels: torch.Tensor) -> torch.Tensor:
        """Resize and centre-crop decoded pixels, on whatever device they are.

        ``CLIPImageProcessor``'s torchvision arithmetic, bit for bit, while the resized image is at most
        ``MAX_RESIZE_RATIO`` times the crop's area (aspect ratios up to 32:1 for a square crop). Past that
        (a 2 x 20,000 strip would become 224 x 2,240,000, 4 GB), only the region the crop keeps is computed:
        :meth:`resize_crop_region`, within one 8-bit level of the full computation.

        Args:
            pixels: uint8 RGB [3, H, W].

        Returns:
            uint8 [3, crop height, crop width], on the device of ``pixels``.
        """
        height, width = pixels.shape[-2:]
        size = self.resize_size(height, width)
        ch, cw = self.crop_size
        if size[0] * size[1] > MAX_RESIZE_RATIO * ch * cw and size[0] >= ch and size[1] >= cw:
            return self.resize_crop_region(pixels.cpu()).to(pixels.device)
        from torchvision.transforms.v2 import functional as TF  # torchvision costs seconds: imported on first use

        mode = TF.InterpolationMode[_RESAMPLE[self.resample]]
        pixels = TF.resize(pixels, list(size), interpolation=mode, antialias=True)
        height, width = pixels.shape[-2:]
        return TF.crop(pixels, int((height - ch) / 2.0), int((width - cw) / 2.0), ch, cw)

    def resize_crop_region(self, pixels: torch.Tensor) -> torch.Tensor:
        """:meth:`resize_crop` computing only the region the crop keeps, for uint8 RGB pixels [3, H, W] on the
        CPU; memory and time bounded by the crop and the source, whatever the aspect ratio.

        PIL's float (mode F) ``Image.resize(size, box=...)`` samples a source box with the same filter centres
        and support as the full resize, so each output pixel is the full resize's. The two passes run in
        torchvision's order (horizontal, then vertical), the intermediate clipped to 0..255 as the 8-bit
        reference clips it; one final rounding. The reference also rounds its intermediate, and the vertical
        weights' absolute sum is at most 1.25, so the two differ by at most 0.5 x 1.25 + a little before the
        final rounding: at most one 8-bit level.
        """
        height, width = pixels.shape[-2:]
        full_height, full_width = self.resize_size(height, width)
        ch, cw = self.crop_size
        top, left = int((full_height - ch) / 2.0), int((full_width - cw) / 2.0)
        scale_y, scale_x = height / full_height, width / full_width
        x0, x1, y0, y1 = left * scale_x, (left + cw) * scale_x, top * scale_y, (top + ch) * scale_y
        support = {2: 1.0, 3: 2.0}[self.resample] * max(scale_y, 1.0) + 1  # source rows the vertical pass reads
        first, last = max(0, math.floor(y0 - support)), min(height, math.ceil(y1 + support))
        rows = last - first
        out = []
        for channel in pixels[:, first:last].numpy().astype(np.float32):
            band = Image.fromarray(channel).resize((cw, rows), self.resample, box=(x0, 0, x1, rows))
            band = Image.fromarray(np.clip(np.asarray(band), 0, 255))  # float32: mode F
            out.append(np.asarray(band.resize((cw, ch), self.resample, box=(0, y0 - first, cw, y1 - first))))
        return torch.from_numpy(np.clip(np.rint(np.stack(out)), 0, 255).astype(np.uint8))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Rescaled and normalised pixel values: uint8 [..., 3, H, W] in, float32 [..., 3, H, W] out, on the device
        of ``pixels``."""
        mean, std = (t.to(pixels.device) for t in self._norm)
        from torchvision.transforms.v2 import functional as TF

        return TF.normalize(pixels.to(torch.float32), mean, std)

    def __call__(self, image: ImageInput, *, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> torch.Tensor:
        """The model's pixel values for one image (any input :func:`load_image` takes): float32 [3, crop height,
        crop width] on the CPU; raises as :func:`load_image` does."""
        return self.normalize(self.uint8(image, max_image_pixels=max_image_pixels))


class AltCLIPProcessor:
    """Tokenizer (the checkpoint's XLM-R sentencepiece) and image transform of one checkpoint.

    Args:
        tokenizer (transformers.PreTrainedTokenizerBase): a transformers XLM-R tokenizer (fast or slow).
        image_transform: the image preprocessing (default: CLIP's at 224).
        context_length: the most tokens kept per text, ``<s>`` and ``</s>`` included (77, as the authors trained;
            at most 512).

    Raises:
        ValueError: a ``context_length`` that is not an integer from 2 to 512.
    """

    def __init__(self, tokenizer, image_transform: ImageTransform | None = None, context_length: int = DEFAULT_CONTEXT_LENGTH):
        self.tokenizer = tokenizer
        self.image_transform = image_transform or ImageTransform()
        self.context_length = self._check_context_length(context_length)

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, context_length: int = DEFAULT_CONTEXT_LENGTH) -> AltCLIPProcessor:
        """Load the tokenizer and ``preprocessor_config.json`` of a checkpoint folder (CLIP's preprocessing at 224
        when the folder has no such file).

        Raises:
            ValueError: transformers cannot load the folder's tokenizer, or ``context_length`` is out of range.
        """
        from transformers import AutoTokenizer

        folder = Path(folder)
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot load the tokenizer in {folder}: {e}") from e
        config = folder / "preprocessor_config.json"
        transform = ImageTransform.from_preprocessor_config(json.loads(config.read_text())) if config.is_file() else ImageTransform()
        return cls(tokenizer, transform, context_length)

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the BAAI/AltCLIP tokenizer and preprocessing files: tokenizer.json, tokenizer_config.json,
        special_tokens_map.json, sentencepiece.bpe.model (for slow tokenizers and FlagAI) and
        preprocessor_config.json; ``AltCLIPProcessor`` and transformers load them."""
        from altclip_adapters.atomic import write_json
        from altclip_adapters.model.files import write_slow_tokenizer_files

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(folder)
        write_slow_tokenizer_files(self.tokenizer, folder)
        config = self.image_transform.to_preprocessor_config()
        write_json(folder / "preprocessor_config.json", config)

    @staticmethod
    def _check_context_length(context_length: int) -> int:
        if not isinstance(context_length, int) or not 2 <= context_length <= 512:
            raise ValueError(f"context_length must be an integer from 2 to 512 (XLM-R's limit); got {context_length!r}")
        return context_length

    def tokenize(
        self, texts: str | Sequence[str], *, context_length: int | None = None, pad_to_context_length: bool = False
    ) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` [N, T] int64, truncated at ``context_length`` (default: the
        processor's, 77), padded to the longest text or, with ``pad_to_context_length``, to the limit; an empty
        list gives [0, 0] (or [0, context_length]). Raises TypeError for anything but a string or a list of them."""
        texts = as_list([texts] if isinstance(texts, str) else texts, "texts")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text {i} is a {type(text).__name__}, not a string")
        length = self._check_context_length(self.context_length if context_length is None else context_length)
        if not texts:  # the tokenizer cannot pad an empty batch; no text is 0 tokens long
            empty = torch.zeros(0, length if pad_to_context_length else 0, dtype=torch.long)
            return {"input_ids": empty, "attention_mask": empty.clone()}
        encoded = self.tokenizer(
            list(texts),
            padding="max_length" if pad_to_context_length else "longest",
            truncation=True,
            max_length=length,
            return_tensors="pt",
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def images(
        self, images: ImageInput | Sequence[ImageInput], *, max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
    ) -> torch.Tensor:
        """The model's ``pixel_values`` for one image or a list of them.

        Args:
            images: one image or a list of images, each anything :func:`load_image` takes.
            max_image_pixels: as in :func:`load_image`.

        Returns:
            float32 [N, 3, H, W] ([0, 3, H, W] for an empty list), H and W the crop size.

        Raises:
            TypeError: ``images`` is neither an image nor a list of them (None, a dict).
            UnreadableImageError: and the other errors of :func:`load_image`, for the first image that fails.
        """
        if is_one_image(images):
            images = [images]
        images = as_list(images, "images")
        if not images:
            return torch.zeros(0, 3, *self.image_transform.crop_size)
        return torch.stack([self.image_transform(image, max_image_pixels=max_image_pixels) for image in images])

    def __call__(self, text=None, images=None, **kwargs) -> dict[str, torch.Tensor]:
        """Model inputs for texts and/or images.

        Args:
            text: a string or a list of strings (see :meth:`tokenize`).
            images: one image or a list of them (see :meth:`images`).
            **kwargs: passed to :meth:`tokenize` (``context_length``, ``pad_to_context_length``).

        Returns:
            ``input_ids`` and ``attention_mask`` (int64 [N, T]) for texts, ``pixel_values`` (float32 [M, 3, H, W])
            for images.

        Raises:
            ValueError: neither texts nor images were given.
        """
        if text is None and images is None:
            raise ValueError("give text=..., images=... or both")
        out = self.tokenize(text, **kwargs) if text is not None else {}
        if images is not None:
            out["pixel_values"] = self.images(images)
        return out


def as_list(items: Any, what: str) -> list:
    """``items`` (a list or other sequence, empty allowed) as a list; raises TypeError naming the type for
    None, a bare string or bytes (one item where a list is expected) and anything that is not a sequence."""
    if isinstance(items, (str, bytes)):
        raise TypeError(f"{what} must be a list; got a single {type(items).__name__}, wrap it in a list: [{what[:-1]}]")
    if not isinstance(items, Sequence):
        raise TypeError(f"{what} must be a list; got {type(items).__name__}")
    return list(items)
