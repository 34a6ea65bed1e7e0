"""`lmm eval RUN_DIR [overrides]`: score a run (or an lmm directory) as it was trained (lmm.commands.run_dir)."""

import sys

from lmm.commands.run_dir import main

if __name__ == "__main__":  # importing this module (e.g. to check it imports) runs nothing
    main("eval", sys.argv[1:])
