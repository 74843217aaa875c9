"""Register AltCLIP with open_clip in every process, the moment open_clip is imported.

``import altclip_adapters`` calls :func:`install`; at interpreter start the wheel's
``altclip_adapters_autoload.pth`` loads this file through the top-level shim
``_altclip_adapters_autoload`` (``autoload/`` in the source tree) and calls :func:`autoload`. It imports only
``os`` and ``sys``: the interpreter start stays cheap (no torch, no open_clip), and tools that start
their own processes (``clip_benchmark``, ``open_clip_train``, ``torchrun``) find AltCLIP unchanged.
Set ``ALTCLIP_ADAPTERS_NO_AUTOLOAD=1`` to switch the interpreter-start part off.
"""

import os
import sys

DISABLE_ENV = "ALTCLIP_ADAPTERS_NO_AUTOLOAD"


def _register() -> None:
    import altclip_adapters.adapters.open_clip  # noqa: F401  registers AltCLIP as it is imported


class _RegisteringLoader:
    """open_clip's own loader, followed by the registration; it hands the module its real loader back."""

    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        module.__loader__ = module.__spec__.loader = self.loader
        _register()


class OpenClipFinder:
    """A ``sys.meta_path`` finder that wraps the loader of the top-level ``open_clip`` module, once."""

    altclip_adapters_hook = True

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "open_clip":
            return None
        sys.meta_path.remove(self)
        from importlib.util import find_spec

        spec = find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


def install() -> None:
    """Register AltCLIP with open_clip now if open_clip is imported, else as soon as it is."""
    if "open_clip" in sys.modules:
        _register()
    elif not any(getattr(finder, "altclip_adapters_hook", False) for finder in sys.meta_path):
        sys.meta_path.insert(0, OpenClipFinder())


def autoload() -> None:
    """What the .pth file runs: :func:`install`, unless ``ALTCLIP_ADAPTERS_NO_AUTOLOAD`` is set."""
    if os.environ.get(DISABLE_ENV, "").strip().lower() in ("", "0", "false", "no"):
        install()
