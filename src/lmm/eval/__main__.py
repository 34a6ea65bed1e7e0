"""`python -m lmm.eval RUN_DIR [overrides]`: score a run (or an lmm directory) as it was trained (lmm.cli)."""

import sys

from lmm.cli import main

main("eval", sys.argv[1:])
