"""``python -m rawflow``: the same command line as the ``rawflow`` console script."""

import sys

from .app.cli import main

sys.exit(main())
