"""``python -m metaplus.reproduce``: the reproduction's command line (:mod:`metaplus.reproduce.cli`)."""

from metaplus.reproduce.cli import main

if __name__ == "__main__":
    main()
