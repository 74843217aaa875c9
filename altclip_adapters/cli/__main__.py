"""``python -m altclip_adapters.cli``: the same as the ``altclip`` command."""

import sys

from . import main

sys.exit(main())
