"""`python -m lmm.pretrain_tiny`, kept working: the same as `lmm pretrain-tiny` (lmm.cli)."""

import sys

from lmm.cli import main

if __name__ == "__main__":
    main(["pretrain-tiny", *sys.argv[1:]])
