"""Run at interpreter start by ``altclip_adapters_autoload.pth``.

Loads ``altclip_adapters/_autoload.py`` as ``altclip_adapters._autoload`` without importing the
package (so no torch), and lets it hook open_clip's import. Installed at the top level of
site-packages by the wheel; the logic lives in the package.
"""

import importlib.util
import os
import sys


def autoload() -> None:
    package = importlib.util.find_spec("altclip_adapters")  # locates the package without running it
    if package is None or not package.submodule_search_locations or "altclip_adapters._autoload" in sys.modules:
        return
    path = os.path.join(list(package.submodule_search_locations)[0], "_autoload.py")
    spec = importlib.util.spec_from_file_location("altclip_adapters._autoload", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.autoload()
