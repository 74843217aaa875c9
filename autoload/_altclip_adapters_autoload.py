"""Run at interpreter start by ``altclip_adapters_autoload.pth``.

Unless ``ALTCLIP_ADAPTERS_NO_AUTOLOAD`` is set (to anything but ``0``, ``false``, ``no`` or empty), loads
``altclip_adapters/integrations/_autoload.py`` as ``altclip_adapters.integrations._autoload`` without importing the
package (so no torch) and lets it hook open_clip's import. Installed at the top level of site-packages by the wheel;
the logic lives in the package. A failure here is one warning, never a failed interpreter start.
"""

import importlib.util
import os
import sys

DISABLE_ENV = "ALTCLIP_ADAPTERS_NO_AUTOLOAD"
HOOK = "altclip_adapters.integrations._autoload"  # the module it loads (a file of the package, loaded by path)
_attempted = False  # site may process this .pth twice (a venv's site-packages is listed twice by some Pythons)


def autoload() -> None:
    global _attempted
    if _attempted or os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no"):
        return
    _attempted = True
    try:
        package = importlib.util.find_spec("altclip_adapters")  # locates the package without running it
        if package is None or not package.submodule_search_locations or HOOK in sys.modules:
            return
        path = os.path.join(list(package.submodule_search_locations)[0], "integrations", "_autoload.py")
        spec = importlib.util.spec_from_file_location(HOOK, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        module.install()
    except Exception as error:
        sys.modules.pop(HOOK, None)
        import warnings

        warnings.warn(
            f"altclip_adapters' open_clip hook did not load, so open_clip will not know AltCLIP: "
            f"{type(error).__name__}: {error}. Set {DISABLE_ENV}=1 to silence this warning.",
            RuntimeWarning,
            stacklevel=2,
        )
