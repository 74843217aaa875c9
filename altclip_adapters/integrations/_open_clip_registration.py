"""AltCLIP's entries in open_clip's tables: model configs, ``baai`` pretrained tags, the model dispatch.

open_clip has no plugin hook, but ``open_clip.factory.create_model`` looks up the name
``CustomTextCLIP`` in its module at call time and passes every model-config key to it as a keyword.
:func:`register` puts a dispatching subclass under that name: a config carrying the ``"altclip"``
key builds :class:`altclip_adapters.integrations.open_clip.AltCLIPOpenCLIP`, every other config builds
open_clip's own class, as before.

Importing this module imports the registry cards and the config dataclasses, not open_clip (the hook
in ``_autoload.py`` may be running it while open_clip is being imported); :func:`register` works on the
imported open_clip. The core (timm, transformers' model code) is imported when open_clip first builds
an AltCLIP model, so the registration that runs on every ``import open_clip`` costs milliseconds.
"""

from __future__ import annotations

from packaging.specifiers import SpecifierSet

from altclip_adapters.model import registry
from altclip_adapters.model.config import OPEN_CLIP_KEY

MARKER = OPEN_CLIP_KEY  # the model-config key that selects AltCLIP; its value is an AltCLIPConfig dict
PRETRAINED_TAG = "baai"
# The open_clip releases registration is written for; pyproject.toml's open_clip extra declares the same range
# (a test holds them together). open_clip's main branch (4.2.0.dev0) keeps the factory tables used here but
# declares breaking changes for integrations: open_clip_train wraps models in TrainingTask with dict batches,
# HFTokenizer pads and validates special tokens differently, torch >= 2.6. None of that is tested here yet.
SUPPORTED_OPEN_CLIP = SpecifierSet(">=3.3,<4")


def _model_class() -> type:
    """The open_clip model class, imported with the core on the first AltCLIP build."""
    try:
        from altclip_adapters.integrations.open_clip import AltCLIPOpenCLIP
    except Exception as error:
        raise ImportError(
            f"open_clip cannot build AltCLIP: importing altclip_adapters' model failed "
            f"({type(error).__name__}: {error})"
        ) from error
    return AltCLIPOpenCLIP


def _dispatching(real: type) -> type:
    class CustomTextCLIP(real):
        """open_clip's CustomTextCLIP, except that a model config with an ``"altclip"`` key builds AltCLIP."""

        altclip_defers_to = real

        def __new__(cls, *args, **kwargs):
            if MARKER in kwargs:
                return _model_class()(*args, **kwargs)
            return real(*args, **kwargs)  # not an instance of cls, so its __init__ is not run twice

    CustomTextCLIP.__module__ = __name__
    return CustomTextCLIP


def check_open_clip() -> None:
    """Raise ImportError naming what is wrong if the imported open_clip is not one registration supports:
    a release outside :data:`SUPPORTED_OPEN_CLIP`, or one without the tables and lookup it relies on."""
    import open_clip
    from open_clip import factory, pretrained

    problems = []
    if not SUPPORTED_OPEN_CLIP.contains(open_clip.__version__, prereleases=True):
        problems.append(f"only open_clip_torch{SUPPORTED_OPEN_CLIP} is supported")
    problems += [
        f"open_clip.factory.{name} is missing"
        for name in ("_MODEL_CONFIGS", "_rescan_model_configs", "create_model")
        if not hasattr(factory, name)
    ]
    if not isinstance(getattr(factory, "CustomTextCLIP", None), type):
        problems.append("open_clip.factory.CustomTextCLIP is not a class")
    elif hasattr(factory, "create_model") and "CustomTextCLIP" not in factory.create_model.__code__.co_names:
        problems.append("open_clip.factory.create_model no longer looks up CustomTextCLIP when it builds a model")
    if not isinstance(getattr(pretrained, "_PRETRAINED", None), dict):
        problems.append("open_clip.pretrained._PRETRAINED is missing")
    if problems:
        raise ImportError(
            f"altclip_adapters cannot register AltCLIP with open_clip {open_clip.__version__}: {'; '.join(problems)}"
        )


def register() -> None:
    """Add ``AltCLIP``, ``AltCLIP-m9`` and ``AltCLIP-m18`` to open_clip: model configs, a ``baai``
    pretrained tag each (the BAAI hub weights) and the model dispatch. Idempotent.

    Raises ImportError if this open_clip is not supported (:func:`check_open_clip`)."""
    check_open_clip()
    from open_clip import factory, pretrained

    for name, card in registry.cards().items():
        factory._MODEL_CONFIGS[name] = card.open_clip_config()
        prep = card.preprocessing
        pretrained._PRETRAINED.setdefault(name, {})[PRETRAINED_TAG] = {
            "url": "",
            "hf_hub": f"{card.hub.repo_id}/{card.hub.weights}",
            "mean": prep.mean,
            "std": prep.std,
            "interpolation": prep.interpolation,
            "resize_mode": "shortest",
        }
    factory._rescan_model_configs()  # keeps list_models() sorted
    if not hasattr(factory.CustomTextCLIP, "altclip_defers_to"):
        factory.CustomTextCLIP = _dispatching(factory.CustomTextCLIP)
