"""The one check for optional dependencies: :func:`require` imports a module of an extra, or raises one
``ImportError`` naming what needs it and the ``pip install`` line that provides it. Standard library only."""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

__all__ = ["MissingExtra", "require"]

DISTRIBUTION = "altclip-adapters"


class MissingExtra(ImportError):
    """An optional dependency is not installed. ``extra``: the extra that installs it."""

    def __init__(self, message: str, *, name: str, extra: str):
        super().__init__(message, name=name)
        self.extra = extra


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """``import_module(module)``, or raise :class:`MissingExtra` (an ``ImportError``) with the one message format:
    ``"{purpose} needs {top-level package} (not installed): pip install 'altclip-adapters[{extra}]'"``.

    Args:
        module: the dotted module to import (``"faiss"``, ``"ray.data"``).
        extra: the extra of this package that installs it (``"index"``, ``"ray"``).
        purpose: what needs it, as the start of a sentence (``"FAISS indexes"``, ``"altclip serve"``).

    Returns:
        The imported module.

    Raises:
        MissingExtra: the module, or a module it imports, is not installed. An ImportError for another reason (a
            broken install) propagates unchanged.
    """
    try:
        return import_module(module)
    except ModuleNotFoundError as e:
        missing = e.name or module
        raise MissingExtra(f"{purpose} needs {missing} (not installed): pip install '{DISTRIBUTION}[{extra}]'",
                           name=missing, extra=extra) from e
