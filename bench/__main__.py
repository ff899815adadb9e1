"""``python -m bench``: see bench.driver."""

import sys

from bench.driver import main

sys.exit(main())
