"""``python -m tlassoc``: the ``tlassoc`` command."""

import sys

try:
    from tlassoc.cli import main
except KeyboardInterrupt:  # Ctrl-C while the command starts: one line, no traceback
    print("tlassoc: interrupted while starting", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
