"""AltCLIP (multilingual CLIP) for open_clip, sentence-transformers, LangChain and LlamaIndex.

Importing this package loads only the core; each ecosystem adapter imports its ecosystem when used.
"""

from . import _autoload
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
    "register",
]
__version__ = "0.1.0"


def register() -> None:
    """Register AltCLIP with open_clip now (this imports open_clip); idempotent.

    Not needed in practice: importing this package registers AltCLIP as soon as open_clip is imported.
    """
    from .adapters.open_clip import register as register_open_clip

    register_open_clip()


_autoload.install()  # registers with open_clip if it is imported, else when it is; imports nothing now
