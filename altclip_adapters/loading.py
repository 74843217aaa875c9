"""The seam through which the core's ``AltCLIP.from_pretrained`` / ``save_pretrained`` reach checkpoint files,
which only ``bridges/`` knows, with every arrow pointing down.

The core calls :func:`bridge` and, on what it returns, ``load_pretrained(name_or_path, *, device, dtype,
revision)`` or ``save_pretrained(model, folder)``. The package's ``__init__``, which Python runs before any of its
submodules (so before the core), sets :data:`provider` to a function that imports ``bridges/hf.py``, the module
providing both. Standard library only.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

provider: Callable[[], ModuleType] | None = None  # set by altclip_adapters/__init__.py


def bridge() -> ModuleType:
    """The module that loads and saves checkpoints (``altclip_adapters.bridges.hf``)."""
    if provider is None:  # only if this module was loaded outside its package
        raise RuntimeError("no checkpoint bridge: import altclip_adapters before calling AltCLIP.from_pretrained")
    return provider()
