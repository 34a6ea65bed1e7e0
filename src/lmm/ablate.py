"""`python -m lmm.ablate`, kept working: the same as `lmm ablate` (lmm.cli)."""

import sys

from lmm.cli import main

if __name__ == "__main__":
    main(["ablate", *sys.argv[1:]])
