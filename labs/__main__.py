"""``python -m labs``: see :mod:`labs.cli`."""

import sys

from labs.cli import main

sys.exit(main())
