"""`python -m lmm.predict`, kept working: the same as `lmm predict` (lmm.cli)."""

import sys

from lmm.cli import main

if __name__ == "__main__":
    main(["predict", *sys.argv[1:]])
