"""Register AltCLIP with open_clip in every process, the moment open_clip is imported.

``import altclip_adapters`` calls :func:`install`; at interpreter start the wheel's
``altclip_adapters_autoload.pth`` loads this file through the top-level shim
``_altclip_adapters_autoload`` (``autoload/`` in the source tree), which calls :func:`install` unless
``ALTCLIP_ADAPTERS_NO_AUTOLOAD`` is set. This module imports only ``sys`` and ``warnings``: the
interpreter start stays cheap (no torch, no open_clip), and tools that start their own processes
(``clip_benchmark``, ``open_clip_train``, ``torchrun``) find AltCLIP unchanged.

The registration is a guest in open_clip's import: if it fails (an open_clip it does not support, a
broken dependency, a bug of ours), open_clip is imported as if this package were absent, one
RuntimeWarning names the cause, and asking open_clip for an AltCLIP model raises a RuntimeError
chained to that cause. ``altclip_adapters.register()`` called explicitly still raises.
"""

import sys
import warnings

_ENTRY_POINTS = ("create_model", "create_model_and_transforms", "create_model_from_pretrained", "get_tokenizer")
_failure = None  # the exception that stopped the registration in this process, if one did
_registering = False  # set while registering: importing the package calls install() again


def _register() -> None:
    """Register AltCLIP with the imported open_clip; on failure, warn once and refuse AltCLIP's names."""
    global _failure, _registering
    if _registering or _failure is not None:
        return
    _registering = True
    try:
        from altclip_adapters.integrations._open_clip_registration import register

        register()
    except Exception as error:
        _failure = error
        _refuse_altclip(sys.modules["open_clip"], error)
        warnings.warn(
            f"AltCLIP is not registered with open_clip, which works without it: {type(error).__name__}: {error}. "
            "Set ALTCLIP_ADAPTERS_NO_AUTOLOAD=1 to silence this warning.",
            RuntimeWarning,
            stacklevel=2,
        )
    finally:
        _registering = False


def _altclip_names() -> set:
    """AltCLIP's open_clip model names (empty if the registry itself cannot be read)."""
    try:
        from altclip_adapters.model import registry

        return set(registry.names())
    except Exception:
        return set()


def _is_altclip_folder(path: str) -> bool:
    """Whether ``path`` holds an open_clip folder (``local-dir:``) whose model config is AltCLIP's."""
    import json

    try:
        with open(f"{path}/open_clip_config.json", encoding="utf-8") as file:
            return "altclip" in json.load(file)["model_cfg"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _refuse_altclip(open_clip, cause: Exception) -> None:
    """Make open_clip's entry points raise for AltCLIP models (a RuntimeError from ``cause``), and only for them."""
    import functools

    names = _altclip_names()

    def asks_for_altclip(model_name) -> bool:
        name = str(model_name)
        if name.startswith("local-dir:"):
            return _is_altclip_folder(name[len("local-dir:") :])
        return name in names

    def refusing(function):
        @functools.wraps(function)
        def entry_point(*args, **kwargs):
            model_name = args[0] if args else kwargs.get("model_name", "")
            if asks_for_altclip(model_name):
                raise RuntimeError(
                    f"open_clip has no AltCLIP model {model_name!r}: altclip_adapters could not register it "
                    f"({type(cause).__name__}: {cause})"
                ) from cause
            return function(*args, **kwargs)

        return entry_point

    for name in _ENTRY_POINTS:
        if callable(getattr(open_clip, name, None)):
            setattr(open_clip, name, refusing(getattr(open_clip, name)))


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
