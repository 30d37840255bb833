"""Reproduction of the papers' rows: the entry point the commands of docs/reproduction.md name.

``python bench/reproduce.py ARGS`` is ``python -m metaplus.reproduce ARGS``; the code is the package
metaplus/reproduce/ (``--help`` describes it).
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # a script's path starts at bench/: this checkout's metaplus, not another install
    sys.path.insert(0, str(REPO))

from metaplus.reproduce.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
