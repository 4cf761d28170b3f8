"""``python -m v2d``: the ``v2d`` command (v2d.cli)."""

import sys

from v2d.cli import main

sys.exit(main())
