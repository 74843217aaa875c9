"""Turn texts (any language) and images into AltCLIP inputs, exactly as ``AltCLIPProcessor`` does."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF

ImageInput = Image.Image | str | Path | np.ndarray | torch.Tensor

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_RESAMPLE = {2: TF.InterpolationMode.BILINEAR, 3: TF.InterpolationMode.BICUBIC}  # PIL codes in preprocessor configs
DEFAULT_CONTEXT_LENGTH = 77  # what the AltCLIP authors trained with


def load_image(image: ImageInput) -> Image.Image:
    """An RGB PIL image from a PIL image, a file path, or a uint8 array/tensor (HWC, CHW or HW).

    Transparency is composited onto white, as transformers does.
    """
    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as opened:
                opened.load()
                image = opened.copy() if opened.mode != "P" else opened.convert("RGBA")
        except FileNotFoundError as e:
            raise FileNotFoundError(f"image file not found: {image}") from e
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"cannot read {image} as an image: {e}") from e
    elif isinstance(image, (np.ndarray, torch.Tensor)):
        array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else image
        if array.dtype != np.uint8:
            raise TypeError(f"image arrays must hold uint8 pixels (0-255); got dtype {array.dtype}")
        if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
            array = array.transpose(1, 2, 0)  # CHW -> HWC
        if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3, 4))):
            raise ValueError(f"image arrays must be HxW, HxWxC or CxHxW with 1, 3 or 4 channels; got shape {array.shape}")
        image = Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array)
    elif not isinstance(image, Image.Image):
        raise TypeError(f"expected an image (PIL image, file path, numpy array or tensor); got {type(image).__name__}")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image.convert("RGBA"))
    return image.convert("RGB")


@dataclass
class ImageTransform:
    """Resize the shortest edge, centre-crop, rescale and normalise: ``CLIPImageProcessor``'s arithmetic."""

    shortest_edge: int = 224
    crop_size: tuple[int, int] = (224, 224)
    resample: int = 3  # PIL.Image.BICUBIC
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
        s = self.shortest_edge
        if min(height, width) == s:
            return height, width
        return (int(s * height / width), s) if width < height else (s, int(s * width / height))

    def uint8(self, image: ImageInput) -> torch.Tensor:
        """Resized and cropped uint8 pixels [3, H, W] (the part that can run in data-loader workers)."""
        return self.resize_crop(torch.from_numpy(np.array(load_image(image))).permute(2, 0, 1).contiguous())

    def resize_crop(self, pixels: torch.Tensor) -> torch.Tensor:
        """Resize and centre-crop decoded uint8 RGB pixels [3, H, W], on whatever device they are."""
        pixels = TF.resize(pixels, list(self.resize_size(*pixels.shape[-2:])), interpolation=_RESAMPLE[self.resample], antialias=True)
        height, width = pixels.shape[-2:]
        ch, cw = self.crop_size
        return TF.crop(pixels, int((height - ch) / 2.0), int((width - cw) / 2.0), ch, cw)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels [..., 3, H, W] -> normalised float32, on whatever device they are."""
        mean, std = (t.to(pixels.device) for t in self._norm)
        return TF.normalize(pixels.to(torch.float32), mean, std)

    def __call__(self, image: ImageInput) -> torch.Tensor:
        """Pixel values [3, H, W] float32 for one image."""
        return self.normalize(self.uint8(image))


class AltCLIPProcessor:
    """Tokenizer (the checkpoint's XLM-R sentencepiece) and image transform of one checkpoint."""

    def __init__(self, tokenizer, image_transform: ImageTransform | None = None, context_length: int = DEFAULT_CONTEXT_LENGTH):
        self.tokenizer = tokenizer
        self.image_transform = image_transform or ImageTransform()
        self.context_length = self._check_context_length(context_length)

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, context_length: int = DEFAULT_CONTEXT_LENGTH) -> AltCLIPProcessor:
        """Load the tokenizer and preprocessor_config.json of a checkpoint folder."""
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
        """Write the tokenizer files and preprocessor_config.json (what ``AltCLIPProcessor`` loads)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(folder)
        config = self.image_transform.to_preprocessor_config()
        (folder / "preprocessor_config.json").write_text(json.dumps(config, indent=2) + "\n")

    @staticmethod
    def _check_context_length(context_length: int) -> int:
        if not isinstance(context_length, int) or not 2 <= context_length <= 512:
            raise ValueError(f"context_length must be an integer from 2 to 512 (XLM-R's limit); got {context_length!r}")
        return context_length

    def tokenize(
        self, texts: str | Sequence[str], *, context_length: int | None = None, pad_to_context_length: bool = False
    ) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` [N, T], truncated at ``context_length`` (default: the
        processor's, 77), padded to the longest text or, with ``pad_to_context_length``, to the limit."""
        texts = [texts] if isinstance(texts, str) else texts
        if texts is None or not isinstance(texts, Sequence) or len(texts) == 0:
            raise ValueError("no texts given: pass a string or a non-empty list of strings")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"text {i} is a {type(text).__name__}, not a string")
        length = self._check_context_length(self.context_length if context_length is None else context_length)
        encoded = self.tokenizer(
            list(texts),
            padding="max_length" if pad_to_context_length else "longest",
            truncation=True,
            max_length=length,
            return_tensors="pt",
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def images(self, images: ImageInput | Sequence[ImageInput]) -> torch.Tensor:
        """``pixel_values`` [N, 3, H, W] float32."""
        if isinstance(images, (Image.Image, str, Path, np.ndarray, torch.Tensor)):
            images = [images]
        if images is None or len(images) == 0:
            raise ValueError("no images given: pass an image or a non-empty list of images")
        return torch.stack([self.image_transform(image) for image in images])

    def __call__(self, text=None, images=None, **kwargs) -> dict[str, torch.Tensor]:
        """Model inputs for texts and/or images: ``input_ids``, ``attention_mask``, ``pixel_values``."""
        if text is None and images is None:
            raise ValueError("give text=..., images=... or both")
        out = self.tokenize(text, **kwargs) if text is not None else {}
        if images is not None:
            out["pixel_values"] = self.images(images)
        return out
