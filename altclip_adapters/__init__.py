"""AltCLIP (multilingual CLIP) for open_clip, sentence-transformers, LangChain and LlamaIndex.

Importing this package loads only the core; each ecosystem adapter imports its ecosystem when used.
"""

from .config import AltCLIPConfig, TextConfig, VisionConfig
from .core import AltCLIP, AltCLIPOutput
from .processor import AltCLIPProcessor, ImageTransform, load_image

__all__ = [
    "AltCLIP",
    "AltCLIPConfig",
    "AltCLIPOutput",
    "AltCLIPProcessor",
    "ImageTransform",
    "TextConfig",
    "VisionConfig",
    "load_image",
]
__version__ = "0.1.0"
