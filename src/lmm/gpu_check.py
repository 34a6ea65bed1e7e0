"""`python -m lmm.gpu_check`, kept working: the same as `lmm gpu-check` (lmm.cli)."""

import sys

from lmm.cli import main

if __name__ == "__main__":
    main(["gpu-check", *sys.argv[1:]])
