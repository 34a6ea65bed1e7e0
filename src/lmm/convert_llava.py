"""`python -m lmm.convert_llava`, kept working: the same as `lmm convert-llava` (lmm.cli)."""

import sys

from lmm.cli import main

if __name__ == "__main__":
    main(["convert-llava", *sys.argv[1:]])
