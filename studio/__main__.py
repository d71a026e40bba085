"""``python -m studio``: the command line (see :mod:`studio.cli`)."""

import sys

from studio.cli import main

sys.exit(main())
