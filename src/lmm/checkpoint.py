"""`python -m lmm.checkpoint consolidate RUN_DIR`, kept working: the same as `lmm consolidate RUN_DIR` (lmm.cli)."""

import sys

from lmm.cli import main

if __name__ == "__main__":
    main(sys.argv[1:])  # its one subcommand was `consolidate`, lmm's subcommand of the same name
