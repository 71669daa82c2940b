"""``python -m bridge``: see :mod:`bridge.cli`."""

import sys

from .cli import main

sys.exit(main())
