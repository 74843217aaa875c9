"""AltCLIP (multilingual CLIP) for open_clip, sentence-transformers, LangChain and LlamaIndex.

Importing this package is cheap: the core (torch, transformers, timm) is imported on first use of one
of the names below (PEP 562), and each ecosystem adapter imports its ecosystem when used.
"""

from importlib import import_module
from types import ModuleType

from . import _autoload, loading

__version__ = "0.1.0"

_EXPORTS = {  # public name -> the submodule defining it
    "AltCLIP": ".core",
    "AltCLIPOutput": ".core",
    "AltCLIPConfig": ".config",
    "TextConfig": ".config",
    "VisionConfig": ".config",
    "AltCLIPProcessor": ".processor",
    "ImageTransform": ".processor",
    "load_image": ".images",
    "UnreadableImageError": ".images",
    "DEFAULT_MAX_IMAGE_PIXELS": ".images",
}
__all__ = [*_EXPORTS, "register"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


def register() -> None:
    """Register AltCLIP with open_clip now (this imports open_clip, not the core); idempotent.

    Not needed in practice: importing this package registers AltCLIP as soon as open_clip is imported.
    Unlike that automatic registration, which warns and leaves open_clip working, this raises on failure.
    """
    from .adapters.open_clip_registration import register as register_open_clip

    register_open_clip()


def _checkpoint_bridge() -> ModuleType:
    """The module behind ``AltCLIP.from_pretrained`` / ``save_pretrained`` (see :mod:`altclip_adapters.loading`)."""
    from .bridges import hf

    return hf


loading.provider = _checkpoint_bridge  # the core calls down into loading, this package's top wires the bridge in
_autoload.install()  # registers with open_clip if it is imported, else when it is; imports nothing now
