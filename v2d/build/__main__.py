"""``python -m v2d.build``: the same as the ``v2d-build`` command."""

import sys

from v2d.build.cli import main

sys.exit(main())
