"""`python -m lmm.chat`, kept working: the same as `lmm chat` (lmm.cli)."""

import sys

from lmm.cli import main

if __name__ == "__main__":
    main(["chat", *sys.argv[1:]])
