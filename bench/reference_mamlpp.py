"""``python bench/reference_mamlpp.py ARGS`` is ``python -m metaplus.benchmarking.reference_mamlpp ARGS`` (the code lives in the package, where
the tests import it; this file keeps the commands the docs print working)."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # a script's path starts at bench/: this checkout's metaplus, not another install
    sys.path.insert(0, str(REPO))

from metaplus.benchmarking.reference_mamlpp import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
