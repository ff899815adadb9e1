"""``python -m bench``: the benchmark matrix (bench.driver); ``python -m bench figures``: the
headline table (bench.figures)."""

import sys

if sys.argv[1:2] == ["figures"]:
    from bench.figures import main

    sys.exit(main(sys.argv[2:]))

from bench.driver import main

sys.exit(main())
