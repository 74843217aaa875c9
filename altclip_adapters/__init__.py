"""AltCLIP (multilingual CLIP) for open_clip, sentence-transformers, LangChain and LlamaIndex, on one fast core.

The package is layered; each folder imports only the ones listed before it:

- ``atomic``, ``extras``: the one file writer; the one optional-import check (standard library only);
- ``model/``: the configuration and cards, the model's math, its checkpoint files, preprocessing and the image
  loader;
- ``inference/``: the ``Embedder`` (bulk, fast path) and the runtimes and exports behind it;
- ``collection/``: inputs and shards, the incremental folder run, embedding folders, FAISS indexes, Ray Data;
- ``integrations/``: open_clip, sentence-transformers, LangChain, LlamaIndex;
- ``serve/``: the HTTP server; ``cli/``: the ``altclip`` command.

Importing this package is cheap: each name below is imported on first use (PEP 562), so ``altclip --help`` and
``import altclip_adapters`` load no torch. Module paths of earlier releases (``altclip_adapters.pipeline``,
``altclip_adapters.sentence_transformers``, named in saved ``modules.json`` files, ...) stay importable: see
:data:`MOVED`.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from importlib import import_module
from typing import TYPE_CHECKING, Any

from altclip_adapters.integrations import _autoload

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec

__version__ = "0.2.0.dev0"

_EXPORTS = {  # public name -> the module defining it
    "AltCLIP": "altclip_adapters.model.core",
    "AltCLIPOutput": "altclip_adapters.model.core",
    "AltCLIPConfig": "altclip_adapters.model.config",
    "TextConfig": "altclip_adapters.model.config",
    "VisionConfig": "altclip_adapters.model.config",
    "AltCLIPProcessor": "altclip_adapters.model.processor",
    "ImageTransform": "altclip_adapters.model.processor",
    "load_image": "altclip_adapters.model.images",
    "UnreadableImageError": "altclip_adapters.model.images",
    "DEFAULT_MAX_IMAGE_PIXELS": "altclip_adapters.model.images",
    "make_checkpoint": "altclip_adapters.model.tiny",
    "Embedder": "altclip_adapters.inference.embedder",
    "export": "altclip_adapters.inference.export",
    "find_images": "altclip_adapters.collection.inputs",
    "embed_folder": "altclip_adapters.collection.run",
    "EmbeddingWriter": "altclip_adapters.collection.store",
    "read_embeddings": "altclip_adapters.collection.store",
    "build_index": "altclip_adapters.collection.index",
    "open_index": "altclip_adapters.collection.search",
    "exact_search": "altclip_adapters.collection.search",
    "EmbeddingIndex": "altclip_adapters.collection.search",
    "add_embeddings": "altclip_adapters.collection.ray",
    "AltCLIPEmbedder": "altclip_adapters.collection.ray",
}
__all__ = [*_EXPORTS, "MOVED", "__version__", "register"]

# Module paths of earlier releases -> the modules that hold their names now. Saved files name some of them
# (sentence-transformers' modules.json), README and user code the others; each stays importable forever, as a
# thin module that forwards attribute lookups to its targets in order.
MOVED: dict[str, tuple[str, ...]] = {
    "altclip_adapters.config": ("altclip_adapters.model.config",),
    "altclip_adapters.registry": ("altclip_adapters.model.registry",),
    "altclip_adapters.images": ("altclip_adapters.model.images",),
    "altclip_adapters.processor": ("altclip_adapters.model.processor",),
    "altclip_adapters.tiny": ("altclip_adapters.model.tiny",),
    "altclip_adapters.core": ("altclip_adapters.model.core", "altclip_adapters.model._text", "altclip_adapters.model._vision"),
    "altclip_adapters.core.model": ("altclip_adapters.model.core",),
    "altclip_adapters.core.text": ("altclip_adapters.model._text",),
    "altclip_adapters.core.vision": ("altclip_adapters.model._vision",),
    "altclip_adapters.bridges": (),
    "altclip_adapters.bridges.files": ("altclip_adapters.model.files",),
    "altclip_adapters.bridges.hf": ("altclip_adapters.model.hf",),
    "altclip_adapters.bridges.mapping": ("altclip_adapters.model._mapping",),
    "altclip_adapters.pipeline": ("altclip_adapters.inference.embedder", "altclip_adapters.collection.inputs"),
    "altclip_adapters.runtimes": ("altclip_adapters.inference.runtimes",),
    "altclip_adapters.export": ("altclip_adapters.inference.export",),
    "altclip_adapters.inputs": ("altclip_adapters.collection.inputs",),
    "altclip_adapters.shards": ("altclip_adapters.collection.shards",),
    "altclip_adapters.bulk": ("altclip_adapters.collection.worker", "altclip_adapters.collection.plan"),
    "altclip_adapters.store": ("altclip_adapters.collection.store", "altclip_adapters.collection.files"),
    "altclip_adapters.index": (
        "altclip_adapters.collection.index",
        "altclip_adapters.collection.search",
        "altclip_adapters.collection.index_rules",
        "altclip_adapters.collection.index_files",
    ),
    "altclip_adapters.ray": ("altclip_adapters.collection.ray",),
    "altclip_adapters.adapters": (),
    "altclip_adapters.adapters.open_clip": ("altclip_adapters.integrations.open_clip",),
    "altclip_adapters.sentence_transformers": ("altclip_adapters.integrations.sentence_transformers",),
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


def register() -> None:
    """Register AltCLIP with open_clip now (this imports open_clip, not the core); idempotent.

    Not needed in practice: importing this package registers AltCLIP as soon as open_clip is imported.
    Unlike that automatic registration, which warns and leaves open_clip working, this raises on failure.
    """
    from altclip_adapters.integrations._open_clip_registration import register as register_open_clip

    register_open_clip()


class _MovedModule(types.ModuleType):
    """An earlier release's module path: attribute lookups go to the modules that hold its names now."""

    def __init__(self, name: str, targets: tuple[str, ...]):
        super().__init__(name, f"Moved: the names of {name} live in {', '.join(targets) or 'its submodules'}.")
        self.__path__: list[str] = []  # a package, so that the submodules listed in MOVED import too
        self._targets = targets

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        for target in self._targets:
            module = import_module(target)
            if hasattr(module, attribute):
                return getattr(module, attribute)
        raise AttributeError(f"module {self.__name__!r} has no attribute {attribute!r}")

    def __dir__(self) -> list[str]:
        return sorted({name for target in self._targets for name in dir(import_module(target))})


class _MovedFinder:
    """Finds the module paths of :data:`MOVED` (only those: every other import is left to Python). A finder and
    loader by protocol (``importlib.abc`` would cost the package's import 13 ms)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec: ModuleSpec) -> types.ModuleType:
        return _MovedModule(spec.name, MOVED[spec.name])

    def exec_module(self, module: types.ModuleType) -> None:
        pass


if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
    sys.meta_path.append(_MovedFinder())
_autoload.install()  # registers with open_clip if it is imported, else when it is; imports nothing now
