"""``python -m tlassoc``: the ``tlassoc`` command."""

import sys

from tlassoc.cli import main

sys.exit(main())
