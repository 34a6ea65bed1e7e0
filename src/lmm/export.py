"""`python -m lmm.export`, kept working: the same as `lmm export` (lmm.cli)."""

import sys

from lmm.cli import main

if __name__ == "__main__":
    main(["export", *sys.argv[1:]])
