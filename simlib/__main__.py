"""``python -m simlib``: see :mod:`simlib.cli`."""

import sys

from simlib.cli import main

sys.exit(main())
