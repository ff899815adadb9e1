"""``python -m bench [COMMAND]``: see bench.cli (and bench/README.md for the index)."""

import sys

from bench.cli import main

sys.exit(main())
