"""``python -m altclip_adapters.cli``: the same as the ``altclip`` command."""

import sys

from altclip_adapters.cli import main

sys.exit(main())
